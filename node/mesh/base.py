"""The mesh boundary: one small Protocol and its data types (the signed announcement,
the blob store, subscriptions); its errors are in errors.py, signed records in records.py.

Every implementation (in-memory, libp2p) honours the same contract, checked by
`tests/network/test_mesh_contract.py`:

* `announce(window, blob)` keeps the blob locally and gossips a small signed
  `Announcement` (never the blob itself) to the run's other peers;
* `subscribe()` yields other peers' verified announcements (never our own);
* `hold(window, blob)` serves a blob by hash without announcing it
  (checkpoint chunks, contributions fetched from others); `forget(w)` drops
  what was announced or held for windows before w;
* `fetch(...)` returns exactly the announced bytes (SHA-256 checked) or raises
  a `FetchError`; it tries every known announcer of the same hash and never
  runs past its timeout;
* `put_record` / `get_record` store small values keyed by (run, window,
  address), signed by that address's key; a record whose signature does not
  recover the key's address is refused on put and on receipt;
* `dial_addrs` are the addresses other nodes pass to `connect(addr, timeout=...)`,
  which dials one peer or raises a `MeshError` (`MeshTimeoutError` once the
  timeout passes).

A deadline that passes raises `MeshTimeoutError`, which is also the built-in
`TimeoutError` (a fetch's is a `FetchTimeoutError`, also a `FetchError`), so callers
catching either keep working; only `get_record` answers None instead (not found).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from node.mesh.errors import BadAnnouncementError
from protocol import canonical
from protocol.errors import ProtocolError
from protocol.identity import ADDRESS_LEN, SIGNATURE_LEN, Identity, keccak256, recover_signer

if TYPE_CHECKING:
    from node.mesh.records import RecordKey

# announcements ride gossip, which silently drops anything over 1 MiB: stay far below
MAX_ANNOUNCEMENT_BYTES = 4096
MAX_ADDRS = 8
MAX_ADDR_LEN = 256
MAX_PEER_ID_LEN = 128
MAX_RUN_LEN = 64
DEFAULT_MAX_BLOB_BYTES = 256 * 1024 * 1024
_ANNOUNCE_DOMAIN = "gradmesh/announce/1"
_U63 = 2**63 - 1


@dataclass(frozen=True)
class Announcement:
    """Signed statement: `announcer` holds a blob of `size` bytes hashing to `sha256`,
    cut into 1 MiB pieces whose hash list hashes to `pieces` (empty: not offered piece
    by piece; node/mesh/pieces.py)."""

    run: str
    window: int
    announcer: bytes  # 20-byte Ethereum address of the signing chain key
    sha256: bytes
    size: int
    peer_id: str
    addrs: tuple[str, ...]
    pieces: bytes = b""  # SHA-256 over the pieces' SHA-256s, or b""
    signature: bytes = field(default=b"", repr=False)

    def _fields(self) -> list[canonical.WireValue]:
        return [self.run, self.window, self.announcer, self.sha256, self.size,
                self.peer_id, list(self.addrs), self.pieces]  # fmt: skip

    def signing_hash(self) -> bytes:
        return keccak256(canonical.pack([_ANNOUNCE_DOMAIN, *self._fields()]))

    @classmethod
    def create(cls, identity: Identity, *, run: str, window: int, blob_sha256: bytes,
               size: int, peer_id: str, addrs: tuple[str, ...],
               pieces: bytes = b"") -> Announcement:
        unsigned = cls(run=run, window=window, announcer=identity.address,
                       sha256=blob_sha256, size=size, peer_id=peer_id, addrs=tuple(addrs),
                       pieces=pieces)
        signature = identity.sign_hash(unsigned.signing_hash())
        signed = cls(**{**unsigned.__dict__, "signature": signature})
        signed.verify()
        return signed

    def encode(self) -> bytes:
        return canonical.pack([*self._fields(), self.signature])

    @classmethod
    def decode(cls, data: bytes) -> Announcement:
        """Parse and verify (shape, caps, signature); raise `BadAnnouncementError`."""
        try:
            value = canonical.unpack(data, max_bytes=MAX_ANNOUNCEMENT_BYTES, max_bin_len=65,
                                     max_array_len=max(MAX_ADDRS, 9), max_str_len=MAX_ADDR_LEN)
            items = canonical.expect_list(value, 9, "announcement")
            addrs = items[6]
            if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS:
                raise BadAnnouncementError("announcement: bad address list")
            ann = cls(
                run=canonical.expect_str(items[0], "run", max_len=MAX_RUN_LEN),
                window=canonical.expect_int(items[1], "window", hi=_U63),
                announcer=canonical.expect_bytes(items[2], "announcer", length=ADDRESS_LEN),
                sha256=canonical.expect_bytes(items[3], "sha256", length=32),
                size=canonical.expect_int(items[4], "size", hi=_U63),
                peer_id=canonical.expect_str(items[5], "peer_id", max_len=MAX_PEER_ID_LEN),
                addrs=tuple(canonical.expect_str(a, "addr", max_len=MAX_ADDR_LEN) for a in addrs),
                pieces=canonical.expect_bytes(items[7], "pieces", max_len=32),
                signature=canonical.expect_bytes(items[8], "signature", length=SIGNATURE_LEN),
            )
        except ProtocolError as exc:
            raise BadAnnouncementError(f"malformed announcement: {exc}") from exc
        if len(ann.pieces) not in (0, 32):
            raise BadAnnouncementError("announcement: pieces root is not 32 bytes")
        ann.verify()
        return ann

    def verify(self) -> None:
        try:
            signer = recover_signer(self.signing_hash(), self.signature)
        except ProtocolError as exc:
            raise BadAnnouncementError(f"announcement signature: {exc}") from exc
        if signer != self.announcer:
            raise BadAnnouncementError("announcement is not signed by its announcer")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class BlobStore:
    """Blobs this node serves, by SHA-256, each tagged with the window it belongs to."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, bytes] = {}
        self._windows: dict[bytes, int] = {}

    def add(self, window: int, blob: bytes) -> bytes:
        digest = sha256(blob)
        self._blobs[digest] = bytes(blob)
        # a blob held for several windows lives as long as its latest one
        self._windows[digest] = max(window, self._windows.get(digest, window))
        return digest

    def get(self, digest: bytes) -> bytes | None:
        return self._blobs.get(digest)

    def __contains__(self, digest: object) -> bool:
        return digest in self._blobs

    def forget(self, before_window: int) -> int:
        old = [d for d, w in self._windows.items() if w < before_window]
        for digest in old:
            del self._blobs[digest], self._windows[digest]
        return len(old)


class Subscription:
    """Announcements from the moment `subscribe()` returns; ends when the mesh stops.

    Registered eagerly (not on first iteration), so nothing announced after
    `subscribe()` returns is missed. Bounded: when a slow reader lets the
    queue fill, newer announcements are dropped for it. `close()` detaches.
    """

    def __init__(self, registry: list[asyncio.Queue[Announcement | None]],
                 capacity: int = 4096) -> None:
        self._queue: asyncio.Queue[Announcement | None] = asyncio.Queue(capacity)
        self._registry = registry
        registry.append(self._queue)
        self._closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Announcement:
        if self._closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self.close()
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(ValueError):
                self._registry.remove(self._queue)


def broadcast(registry: list[asyncio.Queue[Announcement | None]],
              item: Announcement | None) -> None:
    for queue in list(registry):
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(item)


@dataclass(frozen=True)
class MeshStats:
    """A node's transfer counters. A server counts bytes once its write returns, which
    can be a moment after the fetcher holds them: poll a server's counters after a
    fetch rather than reading them once."""

    bytes_in: int
    bytes_out: int
    blobs_served: int
    blobs_fetched: int


FetchTarget = Announcement | tuple[str, bytes]  # an announcement, or (peer id, sha256)


@runtime_checkable
class Mesh(Protocol):
    """What the daemons need from the network; see the module docstring."""

    @property
    def peer_id(self) -> str: ...

    @property
    def address(self) -> bytes: ...

    @property
    def listen_addrs(self) -> tuple[str, ...]: ...

    @property
    def dial_addrs(self) -> tuple[str, ...]:
        """Addresses other peers should dial to reach this node, each ending in
        `/p2p/<peer id>` (what head records carry and `connect` accepts); meaningful
        once `start()` has returned."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def announce(self, window: int, blob: bytes) -> Announcement: ...

    async def hold(self, window: int, blob: bytes) -> bytes:
        """Serve `blob` to peers asking for its hash, without gossiping; returns the hash."""
        ...

    def forget(self, before_window: int) -> int:
        """Stop serving blobs announced or held for windows before `before_window`."""
        ...

    def subscribe(self) -> Subscription: ...

    async def fetch(self, target: FetchTarget, *, timeout: float) -> bytes: ...

    async def put_record(self, key: RecordKey, value: bytes) -> None:
        """Store `value` under `key`, signed by this node's key (`BadRecordError` for
        another address's key); `MeshTimeoutError` if it is not stored in time."""
        ...

    async def get_record(self, key: RecordKey, *, timeout: float = 10.0) -> bytes | None:
        """The highest-seq verified value under `key`; None when no peer produced one
        within `timeout` (in a DHT, absent and unanswered look the same)."""
        ...

    async def connect(self, addr: str, *, timeout: float) -> None:
        """Dial one peer address (another node's `dial_addrs` entry), returning once
        connected. Raises a `MeshError` on failure: `AddressNotAllowedError` for an
        address outside the allowlist (nothing is dialled), `DialError` for one that is
        malformed, unknown, refused or unreachable, `MeshTimeoutError` (also a
        `TimeoutError`) when `timeout` seconds pass first, `MeshStateError` when the
        mesh is not running. Never takes much longer than `timeout`."""
        ...

    def connected_peers(self) -> tuple[str, ...]: ...

    def stats(self) -> MeshStats: ...
