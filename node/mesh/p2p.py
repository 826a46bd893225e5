"""libp2p mesh: py-libp2p (trio) in a dedicated thread behind a small asyncio bridge.

Why a thread and not trio guest mode: see docs in the report / benchmarks.
Everything libp2p runs on the trio thread; asyncio callers go through `_call`,
which schedules a trio task and awaits an asyncio future that the task
resolves with `call_soon_threadsafe`. Cancelling the asyncio side cancels the
trio task. Announcements flow back to asyncio queues the same way.

Transport: TCP + Noise + yamux only (security options set explicitly, no
plaintext), on addresses the `AddressPolicy` allows; dials are checked by the
transport itself before a socket exists. Identity: the libp2p secp256k1 key
is the node's chain key, so a peer id names exactly one Ethereum address.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import warnings
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import coincurve
import multiaddr
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.tcp.tcp import TCP

from node.mesh.addresses import LOOPBACK, AddressPolicy
from node.mesh.base import (
    DEFAULT_MAX_BLOB_BYTES,
    AddressNotAllowedError,
    Announcement,
    BadAnnouncementError,
    BadRecordError,
    BlobStore,
    BlobTooLargeError,
    FetchTarget,
    FetchTimeoutError,
    MeshError,
    MeshStateError,
    MeshStats,
    NoSourceError,
    RecordKey,
    Subscription,
    broadcast,
    open_record,
    record_seq,
    seal_record,
)
from node.mesh.p2p_blob import (
    BLOB_PROTOCOL,
    BUSY,
    CHUNK,
    NOT_FOUND,
    OK,
    REFUSED,
    PeerFault,
    PeerUnavailable,
    ReadLimits,
    TokenBucket,
    read_exact,
    read_response,
    response_header,
)
from protocol.identity import Identity, address_from_public_key

log = logging.getLogger(__name__)

FAULT_PENALTY = -50
SUCCESS_REWARD = 1
OPEN_TIMEOUT_S = 10.0  # stream open + request write
ATTEMPTS_PER_PEER = 3  # transient failures (dial, negotiation) are retried


@dataclass(frozen=True)
class P2PConfig:
    run: str
    listen_host: str = "127.0.0.1"
    port: int = 0
    bootstrap: tuple[str, ...] = ()  # multiaddrs with /p2p/<peer id>
    policy: AddressPolicy = LOOPBACK
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES
    per_peer_streams: int = 4  # concurrent blob streams served per peer
    requests_per_second: float = 20.0  # blob requests per peer (burst = 2x)
    request_timeout: float = 5.0  # to receive the 32-byte request
    idle_timeout: float = 5.0
    min_rate: float = 256 * 1024
    ban_score: int = -100
    start_timeout: float = 30.0
    heartbeat_interval: int = 1


def _peer_address(peer: ID) -> bytes | None:
    """Ethereum address bound to a secp256k1 peer id (None for other key types)."""
    try:
        key = peer.extract_public_key()
    except Exception:
        return None
    if key is None:
        return None
    try:
        return address_from_public_key(coincurve.PublicKey(key.to_bytes()))
    except Exception:
        return None


class _AllowlistTCP(TCP):
    """TCP transport that refuses, before any socket, addresses off the allowlist."""

    def __init__(self, policy: AddressPolicy) -> None:
        super().__init__()
        self._policy = policy

    async def dial(self, maddr: multiaddr.Multiaddr) -> Any:
        self._policy.check(str(maddr))
        return await super().dial(maddr)

    async def dial_with_source(self, maddr: multiaddr.Multiaddr, source: tuple[str, int]) -> Any:
        self._policy.check(str(maddr))
        return await super().dial_with_source(maddr, source)


class _RecordValidator(Validator):
    """DHT validator for `/gradmesh/<run>/<window>/<address>`: signed by that address."""

    def __init__(self, run: str) -> None:
        self.run = run

    def validate(self, key: str, value: bytes) -> None:
        rk = RecordKey.from_path(key)
        if rk.run != self.run:
            raise BadRecordError(f"record of run {rk.run!r}, this mesh serves {self.run!r}")
        open_record(rk, value)

    def select(self, key: str, values: list[bytes]) -> int:
        rk = RecordKey.from_path(key)
        best, best_seq = 0, -1
        for i, v in enumerate(values):
            try:
                seq, _ = open_record(rk, v)
            except BadRecordError:
                continue
            if seq > best_seq:
                best, best_seq = i, seq
        return best


@dataclass
class _PeerState:
    score: int = 0
    streams: int = 0
    bucket: TokenBucket | None = None
    last_fault: str = ""


@dataclass
class _Sources:
    by_peer: dict[str, Announcement] = field(default_factory=dict)


class P2PMesh:
    """A `Mesh` over py-libp2p. Construct freely; `start()` opens sockets."""

    def __init__(self, identity: Identity, config: P2PConfig) -> None:
        config.policy.check(f"/ip4/{config.listen_host}/tcp/{config.port or 1}")
        for addr in config.bootstrap:
            config.policy.check(addr)
        self._identity = identity
        self._cfg = config
        self._key_pair = create_new_key_pair(identity.secret)
        self._peer_id = ID.from_pubkey(self._key_pair.public_key)
        self._topic = f"/gradmesh/{config.run}/announce/1"
        self._blobs = BlobStore()
        self._sources: dict[bytes, dict[str, Announcement]] = defaultdict(dict)
        self._peers: dict[str, _PeerState] = defaultdict(_PeerState)
        self._subs: list[asyncio.Queue[Announcement | None]] = []
        self._seqs: dict[RecordKey, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_event: trio.Event | None = None
        self._host: Any = None
        self._pubsub: Any = None
        self._dht: Any = None
        self._addrs: tuple[str, ...] = ()
        self._running = False
        self._in = self._out = self._served = self._fetched = 0
        self.limits = ReadLimits(config.max_blob_bytes, config.idle_timeout, config.min_rate)

    # ---- identity and state -------------------------------------------------
    @property
    def peer_id(self) -> str:
        return self._peer_id.to_base58()

    @property
    def address(self) -> bytes:
        return self._identity.address

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        return self._addrs

    @property
    def dial_addrs(self) -> tuple[str, ...]:
        """Listen addresses with `/p2p/<peer id>`: what others bootstrap from."""
        return tuple(f"{a}/p2p/{self.peer_id}" for a in self._addrs)

    def peer_score(self, peer_id: str) -> int:
        return self._peers[peer_id].score if peer_id in self._peers else 0

    def banned(self, peer_id: str) -> bool:
        return peer_id in self._peers and self._peers[peer_id].score <= self._cfg.ban_score

    def connected_peers(self) -> tuple[str, ...]:
        if not self._running or self._host is None:
            return ()
        try:
            return tuple(sorted(p.to_base58() for p in self._host.get_connected_peers()))
        except Exception:
            return ()

    def stats(self) -> MeshStats:
        return MeshStats(self._in, self._out, self._served, self._fetched)

    # ---- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        if self._running or self._thread is not None:
            raise MeshStateError("mesh already started")
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,),
                                        name=f"libp2p-{self.peer_id[-8:]}", daemon=True)
        self._thread.start()
        try:
            async with asyncio.timeout(self._cfg.start_timeout):
                await ready
        except BaseException:
            await self.stop()
            raise
        self._running = True

    async def stop(self) -> None:
        self._running = False
        token, stop_event = self._token, self._stop_event
        if token is not None and stop_event is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(stop_event.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)
            self._thread = None
        broadcast(self._subs, None)

    def _thread_main(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None

        def resolve(exc: BaseException | None) -> None:
            if ready.done():
                return
            if exc is None:
                ready.set_result(None)
            else:
                ready.set_exception(exc)

        try:
            trio.run(self._trio_main, lambda: loop.call_soon_threadsafe(resolve, None))
            # py-libp2p 0.8.1 can drop a socket of a connection torn down while it was being
            # dialled or upgraded; reclaim those here instead of at a random later gc
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
        except BaseException as exc:  # report a failed start; never kill the interpreter
            log.warning("libp2p thread ended: %r", exc)
            err = exc if isinstance(exc, MeshError) else MeshError(f"libp2p failed: {exc!r}")
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(resolve, err)

    async def _trio_main(self, on_ready: Callable[[], None]) -> None:
        cfg = self._cfg
        noise = NoiseTransport(self._key_pair,
                               noise_privkey=create_x25519_key_pair().private_key)
        listen = multiaddr.Multiaddr(f"/ip4/{cfg.listen_host}/tcp/{cfg.port}")
        host = new_host(
            key_pair=self._key_pair,
            sec_opt={NOISE_PROTOCOL_ID: noise},
            muxer_opt=create_yamux_muxer_option(),
            listen_addrs=[listen],
            transports=[_AllowlistTCP(cfg.policy)],
            enable_mDNS=False,
            enable_upnp=False,
            addrs_factory=lambda addrs: [a for a in addrs if cfg.policy.filter([str(a)])],
        )
        self._host = host
        self._token = trio.lowlevel.current_trio_token()
        self._stop_event = trio.Event()
        gossipsub = GossipSub(
            protocols=[TProtocol("/meshsub/1.1.0")], degree=6, degree_low=4, degree_high=12,
            heartbeat_interval=cfg.heartbeat_interval, heartbeat_initial_delay=0.1,
            eclipse_protection_enabled=False,  # every test peer shares 127.0.0.1
        )
        pubsub = Pubsub(host, gossipsub, strict_signing=True)
        dht = KadDHT(host, DHTMode.SERVER,
                     validator=NamespacedValidator({"gradmesh": _RecordValidator(cfg.run)},
                                                   strict_validation=True),
                     validator_changed=True, strict_validation=True,
                     enable_providers=False)
        self._pubsub, self._dht = pubsub, dht
        host.set_stream_handler(TProtocol(BLOB_PROTOCOL), self._guarded_blob_handler)
        async with host.run(listen_addrs=[listen]), trio.open_nursery() as nursery:
            self._nursery = nursery
            async with background_trio_service(pubsub), background_trio_service(gossipsub), \
                    background_trio_service(dht):
                await pubsub.wait_until_ready()
                pubsub.set_topic_validator(self._topic, self._validate_gossip, False)
                sub = await pubsub.subscribe(self._topic)
                self._addrs = tuple(cfg.policy.filter(
                    str(a).split("/p2p/")[0] for a in host.get_addrs()))
                for addr in cfg.bootstrap:
                    with trio.move_on_after(5):
                        try:
                            await self._connect(addr)
                        except Exception as exc:
                            log.warning("bootstrap %s failed: %r", addr, exc)
                nursery.start_soon(self._pump_announcements, sub)
                on_ready()
                await self._stop_event.wait()
                await self._close_connections()
                nursery.cancel_scope.cancel()

    async def _close_connections(self) -> None:
        # close sockets ourselves: cancelling the host leaves some unclosed
        with trio.move_on_after(5):
            for peer in list(self._host.get_connected_peers()):
                with contextlib.suppress(Exception):
                    await self._host.disconnect(peer)
            with contextlib.suppress(Exception):
                await self._host.get_network().close()

    async def _connect(self, addr: str) -> None:
        self._cfg.policy.check(addr)
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await self._host.connect(info)
        with contextlib.suppress(Exception):
            await self._dht.add_peer(info.peer_id)

    async def connect(self, addr: str, *, timeout: float = 10.0) -> None:
        """Dial one more peer (a multiaddr with /p2p/); refused off the allowlist."""
        self._cfg.policy.check(addr)
        await self._call(self._connect, addr, timeout=timeout)

    # ---- the asyncio <-> trio bridge -------------------------------------------
    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any,
                    timeout: float) -> Any:
        if not self._running or self._token is None or self._nursery is None:
            raise MeshStateError("mesh is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        scopes: list[trio.CancelScope] = []

        def settle(value: Any, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

        async def runner() -> None:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                scope.deadline = trio.current_time() + timeout
                try:
                    value = await fn(*args)
                except Exception as exc:
                    loop.call_soon_threadsafe(settle, None, exc)
                    return
                loop.call_soon_threadsafe(settle, value, None)
                return
            loop.call_soon_threadsafe(settle, None, TimeoutError("trio deadline"))

        nursery = self._nursery
        try:
            self._token.run_sync_soon(nursery.start_soon, runner)
        except trio.RunFinishedError as exc:
            raise MeshStateError("mesh stopped") from exc
        try:
            return await fut
        except asyncio.CancelledError:
            if scopes:
                with contextlib.suppress(trio.RunFinishedError):
                    self._token.run_sync_soon(scopes[0].cancel)
            raise

    # ---- announcements ------------------------------------------------------------
    def _validate_gossip(self, msg_forwarder: ID, msg: Any) -> bool:
        try:
            ann = Announcement.decode(msg.data)
            self._check_binding(ann, ID(msg.from_id))
        except (BadAnnouncementError, ValueError):
            return False
        return ann.run == self._cfg.run

    def _check_binding(self, ann: Announcement, source: ID) -> None:
        if ann.peer_id != source.to_base58():
            raise BadAnnouncementError("announcement peer id is not its gossip source")
        if _peer_address(source) != ann.announcer:
            raise BadAnnouncementError("peer id key does not match the announcer address")

    async def _pump_announcements(self, sub: Any) -> None:
        while True:
            msg = await sub.get()
            try:
                ann = Announcement.decode(msg.data)
                self._check_binding(ann, ID(msg.from_id))
            except (BadAnnouncementError, ValueError):
                continue
            if ann.announcer == self.address or ann.run != self._cfg.run:
                continue
            self._remember(ann)
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._deliver, ann)

    def _remember(self, ann: Announcement) -> None:
        self._sources[ann.sha256][ann.peer_id] = ann
        addrs = [multiaddr.Multiaddr(a) for a in self._cfg.policy.filter(ann.addrs)]
        if addrs:
            with contextlib.suppress(Exception):
                self._host.get_peerstore().add_addrs(ID.from_base58(ann.peer_id), addrs, 3600)

    def _deliver(self, ann: Announcement) -> None:
        broadcast(self._subs, ann)

    async def announce(self, window: int, blob: bytes) -> Announcement:
        if not self._running:
            raise MeshStateError("mesh is not running")
        if len(blob) > self._cfg.max_blob_bytes:
            raise BlobTooLargeError(f"blob of {len(blob)} bytes exceeds {self._cfg.max_blob_bytes}")
        digest = self._blobs.add(window, blob)
        ann = Announcement.create(self._identity, run=self._cfg.run, window=window,
                                  blob_sha256=digest, size=len(blob), peer_id=self.peer_id,
                                  addrs=self._addrs)
        await self._call(self._pubsub.publish, self._topic, ann.encode(), timeout=10.0)
        return ann

    async def hold(self, window: int, blob: bytes) -> bytes:
        if not self._running:
            raise MeshStateError("mesh is not running")
        if len(blob) > self._cfg.max_blob_bytes:
            raise BlobTooLargeError(f"blob of {len(blob)} bytes exceeds {self._cfg.max_blob_bytes}")
        return self._blobs.add(window, blob)

    def forget(self, before_window: int) -> int:
        return self._blobs.forget(before_window)

    def subscribe(self) -> Subscription:
        if not self._running:
            raise MeshStateError("mesh is not running")
        return Subscription(self._subs)

    # ---- blobs: serving -------------------------------------------------------------
    async def _guarded_blob_handler(self, stream: Any) -> None:
        # an exception escaping a py-libp2p handler can tear the host down: catch all
        try:
            await self._serve_blob(stream)
        except trio.Cancelled:
            raise
        except BaseException as exc:
            log.debug("blob handler: %r", exc)
            with contextlib.suppress(BaseException):
                await stream.reset()

    async def _serve_blob(self, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        state = self._peers[peer]
        if state.bucket is None:
            state.bucket = TokenBucket(self._cfg.requests_per_second,
                                       2 * self._cfg.requests_per_second)
        if self.banned(peer) or not state.bucket.take():
            await stream.write(response_header(REFUSED))
            await stream.close()
            return
        if state.streams >= self._cfg.per_peer_streams:
            await stream.write(response_header(BUSY))
            await stream.close()
            return
        state.streams += 1
        try:
            try:
                digest = await read_exact(stream, 32, self._cfg.request_timeout)
            except (PeerFault, PeerUnavailable):
                await stream.reset()
                return
            blob = self._blobs.get(digest)
            if blob is None:
                await stream.write(response_header(NOT_FOUND))
                await stream.close()
                return
            await stream.write(response_header(OK, len(blob)))
            view = memoryview(blob)
            for start in range(0, len(blob), CHUNK):
                piece = bytes(view[start:start + CHUNK])
                await stream.write(piece)
                self._out += len(piece)
            self._served += 1
            await stream.close()
        finally:
            state.streams -= 1

    # ---- blobs: fetching ---------------------------------------------------------------
    async def fetch(self, target: FetchTarget, *, timeout: float) -> bytes:
        if isinstance(target, Announcement):
            digest, first, size = target.sha256, target.peer_id, target.size
            if size > self._cfg.max_blob_bytes:
                raise BlobTooLargeError(f"announced size {size} exceeds {self._cfg.max_blob_bytes}")
            if target.peer_id not in self._sources[digest] and target.announcer != self.address:
                self._remember(target)
        else:
            first, digest = target
            size = None
        held = self._blobs.get(digest)
        if held is not None:
            return held
        failures: dict[str, str] = {}
        try:
            data = await self._call(self._fetch_any, digest, first, size, failures,
                                    timeout=timeout)
        except TimeoutError:
            raise FetchTimeoutError(f"no source delivered {digest.hex()[:16]} "
                                    f"within {timeout}s", failures) from None
        if data is None:
            raise NoSourceError(f"every source of {digest.hex()[:16]} failed", failures)
        self._fetched += 1
        return bytes(data)

    async def _fetch_any(self, digest: bytes, first: str, size: int | None,
                         failures: dict[str, str]) -> bytes | None:
        faulted: set[str] = set()
        attempts: dict[str, int] = {}
        while True:
            candidates = dict.fromkeys([first, *self._sources.get(digest, {})])
            pending = [p for p in candidates if p not in faulted and not self.banned(p)
                       and attempts.get(p, 0) < ATTEMPTS_PER_PEER]
            if not pending:
                return None
            peer = min(pending, key=lambda p: attempts.get(p, 0))  # untried sources first
            attempts[peer] = attempts.get(peer, 0) + 1
            try:
                return await self._fetch_from(peer, digest, size)
            except PeerFault as exc:
                faulted.add(peer)  # a misbehaving peer gets no second chance
                failures[peer] = f"PeerFault: {exc}"
                await self._penalize(peer, str(exc))
            except AddressNotAllowedError as exc:
                faulted.add(peer)
                failures[peer] = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # dial, negotiation and stream errors: transient
                failures[peer] = f"{type(exc).__name__}: {exc}"

    async def _fetch_from(self, peer: str, digest: bytes, size: int | None) -> bytes:
        pid = ID.from_base58(peer)
        stream = None
        try:
            # opening a stream (dial, multistream, yamux) can stall under load with no
            # error at all; bound it so the attempt fails over instead of hanging
            with trio.fail_after(OPEN_TIMEOUT_S):
                stream = await self._host.new_stream(pid, [TProtocol(BLOB_PROTOCOL)])
                await stream.write(digest)

            def count(n: int) -> None:
                self._in += n

            data = await read_response(stream, digest, size, self.limits, count)
            self._peers[peer].score += SUCCESS_REWARD
            return data
        finally:
            if stream is not None:
                with trio.move_on_after(2), contextlib.suppress(Exception):
                    await stream.close()

    async def _penalize(self, peer: str, why: str) -> None:
        state = self._peers[peer]
        state.score += FAULT_PENALTY
        state.last_fault = why
        log.info("peer %s faulted (%s), score %d", peer, why, state.score)
        with contextlib.suppress(Exception), trio.move_on_after(2):
            await self._host.disconnect(ID.from_base58(peer))

    # ---- records ---------------------------------------------------------------------------
    async def put_record(self, key: RecordKey, value: bytes) -> None:
        if not self._running:
            raise MeshStateError("mesh is not running")
        seq = record_seq(self._seqs.get(key))
        sealed = seal_record(self._identity, key, value, seq)
        self._seqs[key] = seq
        await self._call(self._dht.put_value, key.path(), sealed, timeout=20.0)

    async def get_record(self, key: RecordKey, *, timeout: float = 10.0) -> bytes | None:
        if not self._running:
            raise MeshStateError("mesh is not running")
        try:
            sealed = await self._call(self._dht.get_value, key.path(), timeout=timeout)
        except TimeoutError:
            return None
        if sealed is None:
            return None
        return open_record(key, sealed)[1]
