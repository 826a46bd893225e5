"""Blob serving and fetching for `P2PMesh` (a mixin; trio side of the bridge).

Serving: `/gradmesh/blob/2` requests are rate limited per peer (requests/s, at
most `per_peer_streams` at once, and `peer_upload_rate` bytes/s), refused for
banned peers and answered from the given offset. Fetching: announcers are tried
in turn; a source that dies or stalls mid-blob is resumed at the next one from
the received offset (a faulting source's own bytes are dropped first), and the
SHA-256 of the whole blob is checked at the end whoever sent which part. Each
stream takes `whole_cost` of the node's fetch slots (node/mesh/p2p_slots.py). A source
that failed transiently is tried again after a backoff (0.25 s, then 0.5 s); a
connection the swarm still lists after its peer hung up is dropped and redialled.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from node.mesh.base import Announcement, BlobStore, FetchTarget
from node.mesh.errors import (
    AddressNotAllowedError,
    BlobTooLargeError,
    FetchTimeoutError,
    NoSourceError,
)
from node.mesh.p2p_blob import (
    BLOB_PROTOCOL,
    BUSY,
    NOT_FOUND,
    OK,
    REFUSED,
    REQUEST_LEN,
    ByteBucket,
    Partial,
    PeerFault,
    PeerTooSlow,
    PeerUnavailable,
    ReadLimits,
    TokenBucket,
    parse_request,
    read_exact,
    read_response,
    request,
    response_header,
    serve_guarded,
)
from node.mesh.p2p_config import P2PConfig
from node.mesh.p2p_host import connection_addrs, is_relayed
from node.mesh.p2p_select import open_pipelined
from node.mesh.p2p_slots import FetchSlots, whole_cost

log = logging.getLogger("node.mesh.p2p")

FAULT_PENALTY = -50
SLOW_PENALTY = -10  # timing alone: an honest peer on a congested link can be slow
SUCCESS_REWARD = 1
OPEN_TIMEOUT_S = 10.0  # connect + stream open + request write
ATTEMPTS_PER_PEER = 3  # transient failures (dial, negotiation) are retried
RETRY_BACKOFF_S = 0.25  # wait before a source's second attempt; doubles for the third
# py-libp2p's words for "the swarm lists this peer's connections, but none is alive": for
# about 0.1 s after a peer hangs up it will not dial again on its own
_DEAD_CONNECTION = ("No valid connections", "No ready connections", "Failed to get a valid")
TRANSFER_LOG = 256


@dataclass(frozen=True)
class Transfer:
    """One source's part of a fetch: which bytes came from whom, over which path."""

    sha256: bytes
    peer_id: str
    offset: int  # first byte this source sent
    nbytes: int
    path: tuple[str, ...]  # the connection's transport addresses
    relayed: bool
    # a piece: request sent to its answer's header, seconds (a round trip and what
    # waited ahead of it: the holder's queue, earlier answers on the connection)
    first_byte_s: float | None = None


@dataclass
class _PeerState:
    score: int = 0
    streams: int = 0
    bucket: TokenBucket | None = None
    piece_bucket: TokenBucket | None = None
    upload: ByteBucket | None = None
    last_fault: str = ""


class BlobTransfers:
    """The blob half of `P2PMesh`; the attributes below are the mesh's."""

    _cfg: P2PConfig
    _blobs: BlobStore
    _sources: dict[bytes, dict[str, Announcement]]
    _circuits: dict[str, list[str]]
    _peers: dict[str, _PeerState]
    _host: Any
    _nat: Any
    _in: int
    _out: int
    _served: int
    _fetched: int
    _uplink: ByteBucket | None
    _fetch_slots: FetchSlots
    transfers: deque[Transfer]
    limits: ReadLimits

    @property
    def _whole_cost(self) -> int:
        return whole_cost(self.limits.min_rate, self._fetch_slots.limit)

    @property
    def address(self) -> bytes:
        raise NotImplementedError

    def banned(self, peer_id: str) -> bool:
        raise NotImplementedError

    def _remember(self, ann: Announcement) -> None:
        raise NotImplementedError

    async def _call(self, fn: Any, *args: Any, timeout: float) -> Any:
        raise NotImplementedError

    if TYPE_CHECKING:  # from the swarming mixin (node/mesh/p2p_swarm.py)
        async def _swarm_fetch(self, ann: Announcement,
                               failures: dict[str, str]) -> bytes | None: ...

    # ---- blobs: serving -------------------------------------------------------------
    async def _guarded_blob_handler(self, stream: Any) -> None:
        await serve_guarded(self._serve_blob, stream, "blob")

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
                digest, offset = parse_request(
                    await read_exact(stream, REQUEST_LEN, self._cfg.request_timeout))
            except (PeerFault, PeerUnavailable):
                await stream.reset()
                return
            blob = self._blobs.get(digest)
            if blob is None or offset > len(blob):
                await stream.write(response_header(NOT_FOUND))
                await stream.close()
                return
            await stream.write(response_header(OK, len(blob)))
            await self._send_body(stream, peer, memoryview(blob)[offset:])
            self._served += 1
            await stream.close()
        finally:
            state.streams -= 1

    async def _send_body(self, stream: Any, peer: str, data: bytes | memoryview) -> None:
        """Write `data` as this peer's share and the node's uplink allow, in chunks of
        about 1/8 s of budget (1 MiB when nothing limits), each paid for as it goes."""
        buckets = self._upload_buckets(self._peers[peer])
        step = min([b.piece_size() for b in buckets], default=1 << 20)
        view = memoryview(data)  # slices are not copies: yamux copies once, into its frame
        for start in range(0, len(data), step):
            chunk = view[start:start + step]
            for bucket in buckets:
                await bucket.spend(len(chunk))
            await stream.write(chunk)
            self._out += len(chunk)

    def _upload_buckets(self, state: _PeerState) -> list[ByteBucket]:
        """The byte budgets a send spends: this peer's share and the node's uplink."""
        rate = self._cfg.peer_upload_rate
        if rate > 0 and state.upload is None:
            state.upload = ByteBucket(rate, rate / 4)
        return [b for b in (state.upload, self._uplink) if b is not None]

    async def _admit(self, stream: Any) -> str | None:
        """The peer asking for a piece, or None after answering REFUSED (banned, or over
        its piece request rate)."""
        peer = str(stream.muxed_conn.peer_id.to_base58())
        state = self._peers[peer]
        if state.piece_bucket is None:
            rate = self._cfg.piece_requests_per_second
            state.piece_bucket = TokenBucket(rate, 2 * rate)
        if self.banned(peer) or not state.piece_bucket.take():
            await stream.write(bytes([REFUSED]) + bytes(4))
            await stream.close()
            return None
        return peer

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
            if isinstance(target, Announcement) and target.pieces and self._cfg.swarm:
                data = await self._call(self._swarm_fetch, target, failures, timeout=timeout)
            else:
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
        """Try the announcers in turn; a source that dies mid-blob is resumed from its
        offset at the next one. The SHA-256 covers the whole blob, whoever sent which part;
        a mismatch after a multi-source transfer cannot name the culprit, so the parts are
        dropped, their sources are not asked again for this blob, and it starts over."""
        faulted: set[str] = set()
        attempts: dict[str, int] = {}
        retry_at: dict[str, float] = {}
        partial = Partial()
        while True:
            candidates = dict.fromkeys([first, *self._sources.get(digest, {})])
            pending = [p for p in candidates if p not in faulted and not self.banned(p)
                       and attempts.get(p, 0) < ATTEMPTS_PER_PEER]
            if not pending:
                return None
            # untried sources first, then whoever may be retried soonest
            peer = min(pending, key=lambda p: (attempts.get(p, 0), retry_at.get(p, 0.0)))
            await trio.sleep(max(0.0, retry_at.get(peer, 0.0) - trio.current_time()))
            attempts[peer] = attempts.get(peer, 0) + 1
            try:
                # the node's fetch slots, shared with its piece requests: whole blobs
                # fetched side by side would otherwise split its downlink below the
                # minimum rate and cut honest sources off as too slow
                async with self._fetch_slots.held(self._whole_cost):
                    return await self._fetch_from(peer, digest, size, partial)
            except PeerTooSlow as exc:  # its bytes so far are kept: the hash judges them
                faulted.add(peer)
                failures[peer] = f"PeerTooSlow: {exc}"
                self._slowed(peer, str(exc))
            except PeerFault as exc:
                mismatch = str(exc).startswith("bytes do not hash")
                earlier = {p for p, _, _ in partial.sources} - {peer}
                if mismatch and earlier:
                    # someone among the earlier sources may have lied: start over from
                    # this one, without them and without blaming anyone yet
                    failures[peer] = f"PeerFault: {exc} (resumed transfer; restarted)"
                    faulted.update(earlier)
                    attempts[peer] -= 1
                    partial.reset()
                    continue
                faulted.add(peer)  # a misbehaving peer gets no second chance
                failures[peer] = f"PeerFault: {exc}"
                if mismatch:
                    partial.reset()
                else:
                    partial.rollback()  # its bytes are not trusted either
                await self._penalize(peer, str(exc))
            except AddressNotAllowedError as exc:
                faulted.add(peer)
                failures[peer] = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # dial, negotiation and stream errors: transient
                failures[peer] = f"{type(exc).__name__}: {exc}"
                log.debug("fetch %s from %s: %s", digest.hex()[:12], peer, failures[peer])
                retry_at[peer] = trio.current_time() + RETRY_BACKOFF_S * 2 ** (attempts[peer] - 1)

    async def _open_stream(self, peer: str) -> Any:
        return await self._open(peer, BLOB_PROTOCOL)

    async def _open(self, peer: str, protocol: str, first: bytes = b"",
                    credit: int = 0) -> Any:
        """A stream to `peer` for `protocol`; with `first`, those bytes go out with the
        protocol's negotiation, one round trip instead of three, and with them `credit`
        bytes of receive window (node/mesh/p2p_select.py)."""
        pid = ID.from_base58(peer)
        if self._nat is not None and pid not in self._host.get_connected_peers():
            await self._nat.connect(pid, self._circuits.get(peer, []))

        async def attempt() -> Any:
            if first:
                return await open_pipelined(self._host, pid, protocol, first, credit)
            return await self._host.new_stream(pid, [TProtocol(protocol)])

        try:
            return await attempt()
        except Exception as exc:
            if not any(words in str(exc) for words in _DEAD_CONNECTION):
                raise
        # the swarm still lists a connection the peer hung up: drop it, then dial afresh
        log.debug("dead connection to %s dropped before a redial", peer)
        with trio.move_on_after(2), contextlib.suppress(Exception):
            await self._host.disconnect(pid)
        return await attempt()

    async def _fetch_from(self, peer: str, digest: bytes, size: int | None,
                          partial: Partial) -> bytes:
        stream = None
        offset = partial.offset
        try:
            # opening a stream (dial, multistream, yamux) can stall under load with no
            # error at all; bound it so the attempt fails over instead of hanging
            with trio.fail_after(OPEN_TIMEOUT_S):
                stream = await self._open_stream(peer)
                await stream.write(request(digest, offset))

            def count(n: int) -> None:
                self._in += n

            data = await read_response(stream, digest, size, self.limits, count, partial, peer)
            self._peers[peer].score += SUCCESS_REWARD
            return data
        finally:
            if stream is not None:
                self._log_transfer(stream, peer, digest, offset, partial.offset - offset)
                with trio.move_on_after(2), contextlib.suppress(Exception):
                    await stream.close()

    def _log_transfer(self, stream: Any, peer: str, digest: bytes, offset: int,
                      nbytes: int, first_byte_s: float | None = None) -> None:
        path = tuple(connection_addrs(getattr(stream, "swarm_conn", None)))
        self.transfers.append(Transfer(digest, peer, offset, max(0, nbytes), path,
                                       is_relayed(list(path)), first_byte_s))

    def _slowed(self, peer: str, why: str) -> None:
        """A source too slow for a fetch: a small score, and it stays connected."""
        state = self._peers[peer]
        state.score += SLOW_PENALTY
        state.last_fault = why
        log.info("peer %s too slow (%s), score %d", peer, why, state.score)

    async def _penalize(self, peer: str, why: str) -> None:
        state = self._peers[peer]
        state.score += FAULT_PENALTY
        state.last_fault = why
        log.info("peer %s faulted (%s), score %d", peer, why, state.score)
        with contextlib.suppress(Exception), trio.move_on_after(2):
            await self._host.disconnect(ID.from_base58(peer))
