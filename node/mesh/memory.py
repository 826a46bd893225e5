"""In-process mesh for unit tests: a shared `MemoryNetwork` and one `MemoryMesh` per node.

Honours the full `Mesh` contract (signed announcements, SHA-256 checks,
retries across announcers, timeouts, signed records) without sockets. Tests
can make a node misbehave with `MemoryNetwork.set_fault`.

Every started node of a network is reachable from every other (the network is one
full mesh); `connect` checks that an address names a started node of the *same*
network (`/memory/<network>/p2p/<peer id>`, as in `dial_addrs`) and honours the
target's faults: "stall" never answers (the dial times out), "refuse" refuses.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from typing import Literal

from node.mesh.base import (
    DEFAULT_MAX_BLOB_BYTES,
    Announcement,
    BlobStore,
    FetchTarget,
    MeshStats,
    Subscription,
    broadcast,
    sha256,
)
from node.mesh.errors import (
    BadAnnouncementError,
    BlobTooLargeError,
    DialError,
    FetchError,
    FetchTimeoutError,
    HashMismatchError,
    MeshStateError,
    MeshTimeoutError,
    NoSourceError,
)
from node.mesh.pieces import piece_hashes, pieces_root
from node.mesh.records import RecordKey, open_record, record_seq, seal_record
from protocol.identity import Identity

Fault = Literal["corrupt", "stall", "refuse"]
_QUEUE_CAP = 4096
_NETWORK_IDS = itertools.count(1)


class MemoryNetwork:
    """The shared medium: who is up, announcements in flight, the record store."""

    def __init__(self, *, latency: float = 0.0) -> None:
        self.latency = latency
        self.nodes: dict[str, MemoryMesh] = {}
        self.records: dict[str, bytes] = {}
        self.faults: dict[str, Fault] = {}
        self.name = f"net{next(_NETWORK_IDS)}"  # in every dial address of its nodes

    def set_fault(self, peer_id: str, fault: Fault | None) -> None:
        """Make `peer_id` serve wrong bytes, never answer, or refuse every fetch."""
        if fault is None:
            self.faults.pop(peer_id, None)
        else:
            self.faults[peer_id] = fault

    def node(self, identity: Identity, run: str = "test-run", *,
             max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES) -> MemoryMesh:
        return MemoryMesh(self, identity, run, max_blob_bytes=max_blob_bytes)


class MemoryMesh:
    def __init__(self, network: MemoryNetwork, identity: Identity, run: str, *,
                 max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES) -> None:
        self._net = network
        self._identity = identity
        self._run = run
        self._max_blob = max_blob_bytes
        self._peer_id = "mem-" + identity.address.hex()
        self._blobs = BlobStore()
        self._sources: dict[bytes, dict[str, Announcement]] = defaultdict(dict)
        self._subs: list[asyncio.Queue[Announcement | None]] = []
        self._seqs: dict[RecordKey, int] = {}
        self._running = False
        self._in = self._out = self._served = self._fetched = 0

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def address(self) -> bytes:
        return self._identity.address

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        return (f"/memory/{self._peer_id}",)

    @property
    def dial_addrs(self) -> tuple[str, ...]:
        return (f"/memory/{self._net.name}/p2p/{self._peer_id}",)

    def _dial_target(self, addr: str) -> str:
        """The peer id `addr` names on this network, or `DialError`."""
        parts = addr.split("/")
        if len(parts) == 5 and parts[:2] == ["", "memory"] and parts[3] == "p2p" and parts[4]:
            if parts[2] != self._net.name:
                raise DialError(f"{addr!r:.120} is not on in-memory network {self._net.name}")
            peer = parts[4]
        elif len(parts) == 3 and parts[:2] == ["", "memory"] and parts[2]:
            peer = parts[2]  # a listen address
        else:
            raise DialError(f"not an in-memory address: {addr!r:.120}")
        return peer

    async def connect(self, addr: str, *, timeout: float = 10.0) -> None:
        self._require_running()
        peer = self._dial_target(addr)
        if peer == self._peer_id:
            return  # as libp2p: dialling oneself is a no-op
        if peer not in self._net.nodes:
            raise DialError(f"no started node at {addr!r:.120}")
        try:
            async with asyncio.timeout(timeout):
                if self._net.latency:
                    await asyncio.sleep(self._net.latency)
                if self._net.faults.get(peer) == "stall":
                    await asyncio.Event().wait()
        except TimeoutError:
            raise MeshTimeoutError(f"dial {addr!r:.120} did not complete within {timeout}s"
                                   ) from None
        if self._net.faults.get(peer) == "refuse":
            raise DialError(f"peer {peer} refused the connection")
        self._require_running()
        if peer not in self._net.nodes:
            raise DialError(f"peer {peer} went away while being dialled")

    async def start(self) -> None:
        if self._running:
            raise MeshStateError("mesh already started")
        self._running = True
        self._net.nodes[self._peer_id] = self

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._net.nodes.pop(self._peer_id, None)
        broadcast(self._subs, None)

    def _require_running(self) -> None:
        if not self._running:
            raise MeshStateError("mesh is not running")

    async def announce(self, window: int, blob: bytes) -> Announcement:
        self._require_running()
        if len(blob) > self._max_blob:
            raise BlobTooLargeError(f"blob of {len(blob)} bytes exceeds {self._max_blob}")
        digest = self._blobs.add(window, blob)
        ann = Announcement.create(self._identity, run=self._run, window=window,
                                  blob_sha256=digest, size=len(blob), peer_id=self._peer_id,
                                  addrs=self.listen_addrs, pieces=pieces_root(piece_hashes(blob)))
        wire = ann.encode()
        for node in list(self._net.nodes.values()):
            if node is not self:
                node._receive(wire)
        return ann

    def _receive(self, wire: bytes) -> None:
        try:
            ann = Announcement.decode(wire)
        except BadAnnouncementError:
            return
        if ann.run != self._run or ann.announcer == self.address:
            return
        self._sources[ann.sha256][ann.peer_id] = ann
        broadcast(self._subs, ann)

    async def hold(self, window: int, blob: bytes) -> bytes:
        self._require_running()
        if len(blob) > self._max_blob:
            raise BlobTooLargeError(f"blob of {len(blob)} bytes exceeds {self._max_blob}")
        return self._blobs.add(window, blob)

    def forget(self, before_window: int) -> int:
        return self._blobs.forget(before_window)

    def subscribe(self) -> Subscription:
        if not self._running:
            raise MeshStateError("mesh is not running")
        return Subscription(self._subs)

    async def fetch(self, target: FetchTarget, *, timeout: float) -> bytes:
        self._require_running()
        if isinstance(target, Announcement):
            digest, first = target.sha256, target.peer_id
            if target.size > self._max_blob:
                raise BlobTooLargeError(f"announced size {target.size} exceeds {self._max_blob}")
        else:
            first, digest = target
        held = self._blobs.get(digest)
        if held is not None:
            return held
        peers = [first] + [p for p in self._sources.get(digest, {}) if p != first]
        failures: dict[str, str] = {}
        try:
            async with asyncio.timeout(timeout):
                for peer in peers:
                    try:
                        data = await self._fetch_one(peer, digest)
                    except FetchError as exc:
                        failures[peer] = f"{type(exc).__name__}: {exc}"
                        continue
                    self._fetched += 1
                    return data
        except TimeoutError:
            raise FetchTimeoutError(f"no source delivered {digest.hex()[:16]} within {timeout}s",
                                    failures) from None
        raise NoSourceError(f"every source of {digest.hex()[:16]} failed", failures)

    async def _fetch_one(self, peer: str, digest: bytes) -> bytes:
        node = self._net.nodes.get(peer)
        if node is None:
            raise FetchError(f"peer {peer} is not reachable")
        fault = self._net.faults.get(peer)
        if self._net.latency:
            await asyncio.sleep(self._net.latency)
        if fault == "stall":
            await asyncio.Event().wait()
        if fault == "refuse":
            raise FetchError(f"peer {peer} refused")
        blob = node._blobs.get(digest)
        if blob is None:
            raise FetchError(f"peer {peer} does not hold {digest.hex()[:16]}")
        if len(blob) > self._max_blob:
            raise BlobTooLargeError(f"blob from {peer} exceeds {self._max_blob}")
        if fault == "corrupt":
            blob = bytes([blob[0] ^ 1]) + blob[1:] if blob else b"x"
        node._out += len(blob)
        node._served += 1
        self._in += len(blob)
        if sha256(blob) != digest:
            raise HashMismatchError(f"peer {peer} sent bytes that do not hash to the request")
        return blob

    async def put_record(self, key: RecordKey, value: bytes) -> None:
        self._require_running()
        seq = record_seq(self._seqs.get(key))
        sealed = seal_record(self._identity, key, value, seq)
        self._seqs[key] = seq
        self._store_record(key, sealed)

    def _store_record(self, key: RecordKey, sealed: bytes) -> None:
        """What every peer's validator does: verify, keep the highest seq."""
        seq, _ = open_record(key, sealed)
        old = self._net.records.get(key.path())
        if old is not None and open_record(key, old)[0] > seq:
            return
        self._net.records[key.path()] = sealed

    async def get_record(self, key: RecordKey, *, timeout: float = 10.0) -> bytes | None:
        self._require_running()
        sealed = self._net.records.get(key.path())
        if sealed is None:
            return None
        return open_record(key, sealed)[1]

    def connected_peers(self) -> tuple[str, ...]:
        if not self._running:
            return ()
        return tuple(sorted(p for p in self._net.nodes if p != self._peer_id))

    def stats(self) -> MeshStats:
        return MeshStats(self._in, self._out, self._served, self._fetched)
