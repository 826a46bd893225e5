"""libp2p mesh: py-libp2p (trio) in a dedicated thread behind a small asyncio bridge.

Everything libp2p runs on the trio thread; asyncio callers go through `_call`,
which schedules a trio task and awaits an asyncio future that the task
resolves with `call_soon_threadsafe`. Cancelling the asyncio side cancels the
trio task. Announcements flow back to asyncio queues the same way.

Split: the bridge in `p2p_bridge`, host construction in `p2p_host`, the blob wire
protocol in `p2p_blob`, relay / AutoNAT / DCUtR in `p2p_nat`, the config in
`p2p_config`; the mixins `PeerViews` (`p2p_peers`: ids, addresses, peers),
`Announcements` (`p2p_gossip`), `PieceServing` (`p2p_serve`), `PieceTransfers`
(`p2p_swarm`), `HaveBatches` (`p2p_haves`), `BlobTransfers` (`p2p_transfer`) and
`Records` (`p2p_records`);
this module holds the mesh itself (lifecycle, blobs held). Identity: the
libp2p secp256k1 key is the node's chain key, so a peer id names exactly one
Ethereum address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import multiaddr
import numpy as np
import trio
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service

from node.mesh.base import Announcement, BlobStore, MeshStats, broadcast
from node.mesh.errors import (
    BlobTooLargeError,
    DialError,
    MeshError,
    MeshStateError,
    MeshTimeoutError,
)
from node.mesh.p2p_blob import (
    BLOB_PROTOCOL,
    ByteBucket,
    ReadLimits,
)
from node.mesh.p2p_bridge import call_in_trio, run_trio_thread
from node.mesh.p2p_config import P2PConfig
from node.mesh.p2p_gossip import Announcements
from node.mesh.p2p_haves import HAVES_PROTOCOL, HaveBatches
from node.mesh.p2p_host import (
    AllowlistTCP,
    RecordValidator,
    build_dht,
    build_host,
    build_pubsub,
    listen_multiaddr,
    peer_address,
)
from node.mesh.p2p_peers import PeerViews
from node.mesh.p2p_pieces import (
    PIECE_PROTOCOL,
    FetchJob,
    Partial,
    fetch_slots,
    upload_slots,
)
from node.mesh.p2p_records import Records
from node.mesh.p2p_serve import PieceServing
from node.mesh.p2p_slots import FetchSlots
from node.mesh.p2p_swarm import PieceTransfers
from node.mesh.p2p_transfer import TRANSFER_LOG, BlobTransfers, Transfer, _PeerState
from node.mesh.records import RecordKey
from protocol.identity import Identity

__all__ = ["P2PConfig", "P2PMesh", "Transfer"]

# kept importable under their historical names
_AllowlistTCP = AllowlistTCP
_RecordValidator = RecordValidator
_peer_address = peer_address

log = logging.getLogger(__name__)


class P2PMesh(PeerViews, Announcements, PieceServing, PieceTransfers, HaveBatches,
              BlobTransfers, Records):
    """A `Mesh` over py-libp2p. Construct freely; `start()` opens sockets."""

    def __init__(self, identity: Identity, config: P2PConfig) -> None:
        config.check_addresses()
        self._identity = identity
        self._cfg = config
        self._key_pair = create_new_key_pair(identity.secret)
        self._peer_id = ID.from_pubkey(self._key_pair.public_key)
        self._topic = f"/gradmesh/{config.run}/announce/1"
        self._blobs = BlobStore()
        self._partials: dict[bytes, Partial] = {}  # blobs being fetched piece by piece
        self._seeding: dict[bytes, np.ndarray] = {}  # pieces sent per blob held whole
        self._piece_bytes_out: dict[bytes, int] = {}  # piece bytes sent per blob
        self._lists: dict[bytes, bytes] = {}  # piece-hash lists of blobs held whole
        self._upload_slots: trio.Semaphore | None = None
        # requests open at once over all fetches (node/mesh/p2p_slots.py)
        self._fetch_slots = FetchSlots(fetch_slots(config.download_rate))
        self._source_load: Counter[str] = Counter()  # piece requests open, per source
        self._source_rates: dict[str, float] = {}  # per source: its last piece, bytes/s
        self._jobs: list[FetchJob] = []  # swarm fetches running (node/mesh/p2p_swarm.py)
        rate = config.upload_rate
        self._uplink: ByteBucket | None = ByteBucket(rate, rate / 4) if rate > 0 else None
        self._sources: dict[bytes, dict[str, Announcement]] = defaultdict(dict)
        self._circuits: dict[str, list[str]] = {}  # peer id -> its circuit addrs (with /p2p/)
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
        self._nat: Any = None
        self._addrs: tuple[str, ...] = ()
        self._running = False
        self._in = self._out = self._served = self._fetched = 0
        self.transfers: deque[Transfer] = deque(maxlen=TRANSFER_LOG)
        self.limits = ReadLimits(config.max_blob_bytes, config.idle_timeout, config.min_rate)

    # ---- state ------------------------------------------------------------------
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
        assert self._loop is not None
        run_trio_thread(self._trio_main, self._loop, ready)

    async def _trio_main(self, on_ready: Callable[[], None]) -> None:
        cfg = self._cfg
        listen = listen_multiaddr(cfg)
        host = build_host(cfg, self._key_pair)
        self._host = host
        self._token = trio.lowlevel.current_trio_token()
        self._stop_event = trio.Event()
        pubsub, gossipsub = build_pubsub(cfg, host)
        dht = build_dht(cfg, host)
        self._pubsub, self._dht = pubsub, dht
        host.set_stream_handler(TProtocol(BLOB_PROTOCOL), self._guarded_blob_handler)
        host.set_stream_handler(TProtocol(PIECE_PROTOCOL), self._guarded_piece_handler)
        host.set_stream_handler(TProtocol(HAVES_PROTOCOL), self._guarded_haves_handler)
        self._upload_slots = trio.Semaphore(upload_slots(cfg.upload_rate))
        async with host.run(listen_addrs=[listen]), trio.open_nursery() as nursery, \
                contextlib.AsyncExitStack() as stack:
            self._nursery = nursery
            async with background_trio_service(pubsub), background_trio_service(gossipsub), \
                    background_trio_service(dht):
                await pubsub.wait_until_ready()
                pubsub.set_topic_validator(self._topic, self._validate_gossip, False)
                sub = await pubsub.subscribe(self._topic)
                self._addrs = tuple(cfg.policy.filter(
                    str(a).split("/p2p/")[0] for a in host.get_addrs()))
                if cfg.nat_traversal:
                    from node.mesh.p2p_nat import NatTraversal

                    nat = NatTraversal(host, cfg)
                    await nat.start(stack, nursery)
                    self._nat = nat
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
                await stack.aclose()
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
        """Dial one more peer (a multiaddr with /p2p/); refused off the allowlist
        (`AddressNotAllowedError`, nothing dialled). Any other failure is a `DialError`,
        the deadline passing a `MeshTimeoutError` (see `Mesh.connect`)."""
        self._cfg.policy.check(addr)
        try:
            await self._call(self._connect, addr, timeout=timeout)
        except MeshTimeoutError as exc:
            raise MeshTimeoutError(f"dial {addr!r:.120} did not complete within {timeout}s"
                                   ) from exc
        except MeshError:
            raise
        except TimeoutError as exc:  # a timeout inside libp2p, before ours
            raise MeshTimeoutError(f"dial {addr!r:.120}: {exc}") from exc
        except Exception as exc:  # OSError, libp2p's swarm/transport/multiaddr errors
            raise DialError(f"dial {addr!r:.120} failed: {type(exc).__name__}: {exc}"
                            ) from exc

    # ---- the asyncio <-> trio bridge (node/mesh/p2p_bridge.py) -----------------
    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any,
                    timeout: float) -> Any:
        if not self._running or self._token is None or self._nursery is None:
            raise MeshStateError("mesh is not running")
        return await call_in_trio(self._token, self._nursery, fn, *args, timeout=timeout)

    async def hold(self, window: int, blob: bytes) -> bytes:
        if not self._running:
            raise MeshStateError("mesh is not running")
        if len(blob) > self._cfg.max_blob_bytes:
            raise BlobTooLargeError(f"blob of {len(blob)} bytes exceeds {self._cfg.max_blob_bytes}")
        return self._blobs.add(window, blob)

    def forget(self, before_window: int) -> int:
        # the trio thread adds to these dicts meanwhile: iterate over copies (`list` of a
        # dict is one call under the GIL), and drop keys that may be gone already
        for digest, partial in list(self._partials.items()):
            if partial.window < before_window:
                self._partials.pop(digest, None)
        dropped = self._blobs.forget(before_window)
        for table in (self._seeding, self._lists):
            for digest in [d for d in list(table) if d not in self._blobs]:
                table.pop(digest, None)
        for digest in [d for d in list(self._piece_bytes_out)
                       if d not in self._blobs and d not in self._partials]:
            self._piece_bytes_out.pop(digest, None)
        return dropped
