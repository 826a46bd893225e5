"""Swarming for `P2PMesh`: announced blobs are fetched piece by piece from every
holder of a piece (a mixin; trio side of the bridge). Serving pieces is
node/mesh/p2p_serve.py's; the wire format is node/mesh/p2p_pieces.py's.

A fetch (`_swarm_fetch`) first gets the hash list from any holder and checks it
against the announcement's signed `pieces` root, and announces the blob under its
own name (same hash, size and root: "I serve its pieces"), so that the other
fetchers learn of it; then it keeps up to `fetch_slots` piece requests open, each for
the rarest piece it lacks (node/mesh/pieces.py) from the least-used source that has
it, learning who has what from the holders' bitfields, asked again every
`HAVE_EVERY_S`. The node's fetches share its `fetch_slots` (4, or what a declared
downlink carries: up to 8) and one request per source (`PER_SOURCE`; two,
`PER_SOURCE_ALONE`, when no other source can take one), as the simulator
assumes: more would split the node's own downlink so thin that honest holders
miss the piece minimum rate and are cut off as too slow. They also share
what each source's last piece took: among the sources it uses least, a fetch asks
the fastest (`fastest_first`). A request counts against its source and the slots
only until its answer's end is a round trip away (`tail_watch`): then the fetch asks
again, so a source's link has no idle round trip between two pieces. Every piece
is checked against its hash, so a wrong piece names its sender exactly: that source
is penalised and not asked again. The whole blob's SHA-256 is checked at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from node.mesh.base import Announcement
from node.mesh.p2p_blob import (
    BUSY,
    NOT_FOUND,
    OK,
    REFUSED,
    PeerFault,
    PeerTooSlow,
    PeerUnavailable,
    ReadLimits,
    read_exact,
)
from node.mesh.p2p_haves import next_round
from node.mesh.p2p_pieces import (
    ATTEMPTS_PER_SOURCE,
    GIVE_UP_S,
    HAVE,
    HAVE_EVERY_S,
    HAVE_PEERS,
    HEADER_LEN,
    LIST,
    PIECE_MIN_RATE,
    PIECE_PROTOCOL,
    PIECE_TIMEOUT_S,
    FetchJob,
    Partial,
    piece_request,
)
from node.mesh.p2p_slots import WAKE, FetchSlots
from node.mesh.pieces import (
    PER_SOURCE_ALONE,
    PIECE_BYTES,
)

RATES_KEPT = 1024  # sources whose last piece rate a node remembers (most recent)


def tail_watch(length: int, first_byte_s: float, almost_done: Callable[[], None] | None
               ) -> Callable[[int], None] | None:
    """A `read_exact` progress callback that calls `almost_done` once, when the bytes
    still to come would take, at the rate so far, no longer than the answer's first
    byte took (a round trip and the holder's queue): a request sent then is answered
    as this answer ends, so the source's link has no gap between two pieces."""
    if almost_done is None:
        return None
    start, fired = trio.current_time(), False

    def progress(got: int) -> None:
        nonlocal fired
        elapsed = trio.current_time() - start
        if not fired and got < length and (length - got) * elapsed <= got * first_byte_s:
            fired = True
            almost_done()

    return progress


class PieceTransfers:
    """The fetching half of `P2PMesh`'s pieces; the attributes below are the mesh's."""

    _partials: dict[bytes, Partial]
    _sources: dict[bytes, dict[str, Announcement]]
    _host: Any
    _in: int
    limits: ReadLimits
    _fetch_slots: FetchSlots
    _source_load: Counter[str]
    _source_rates: dict[str, float]
    _jobs: list[FetchJob]  # the swarm fetches running

    if TYPE_CHECKING:  # from the blob mixin (node/mesh/p2p_transfer.py) and others
        async def _penalize(self, peer: str, why: str) -> None: ...
        def _slowed(self, peer: str, why: str) -> None: ...
        async def _open(self, peer: str, protocol: str, first: bytes = b"",
                        credit: int = 0) -> Any: ...
        async def _announce_serving(self, ann: Announcement) -> None: ...
        async def _have_batched(self, peer: str, digest: bytes, count: int
                                ) -> np.ndarray: ...
        def _log_transfer(self, stream: Any, peer: str, digest: bytes, offset: int,
                          nbytes: int, first_byte_s: float | None = None) -> None: ...

    # ---- fetching ------------------------------------------------------------------------
    async def _ask(self, peer: str, digest: bytes, index: int, cap: int,
                   almost_done: Callable[[], None] | None = None) -> bytes:
        """One request; PeerUnavailable for an honest no, PeerFault for a broken answer.
        With `almost_done`, that is called once the answer's end is a round trip away
        (`tail_watch`)."""
        asked = trio.current_time()
        # the whole answer is credited as the request leaves: it takes one round trip
        stream = await self._open(peer, PIECE_PROTOCOL, piece_request(digest, index),
                                  credit=HEADER_LEN + cap)
        try:
            header = await read_exact(stream, HEADER_LEN, 5.0)
            first_byte_s = trio.current_time() - asked
            status, length = header[0], int.from_bytes(header[1:], "big")
            if status in (NOT_FOUND, BUSY, REFUSED) and length == 0:
                raise PeerUnavailable({NOT_FOUND: "not found", BUSY: "busy",
                                       REFUSED: "refused"}[status])
            if status != OK or length > cap:
                raise PeerFault(f"bad piece header (status {status}, length {length})")
            # the fetch's minimum rate, after its grace period, bounds every answer
            with trio.move_on_after(self.limits.grace + length / PIECE_MIN_RATE) as cs:
                body = await read_exact(stream, length, self.limits.idle_timeout,
                                        tail_watch(length, first_byte_s, almost_done))
            if cs.cancelled_caught:
                raise PeerTooSlow(f"too slow: {length} bytes not sent in time")
            self._in += length
            if index < HAVE:  # a piece: logged like a whole blob's part (`transfers`)
                self._log_transfer(stream, peer, digest, index * PIECE_BYTES, length,
                                   first_byte_s)
            return body
        finally:
            with trio.move_on_after(2), contextlib.suppress(Exception):
                await stream.close()

    async def _swarm_fetch(self, ann: Announcement, failures: dict[str, str]) -> bytes | None:
        """Gather `ann`'s blob piece by piece from everyone who has pieces of it; None
        when no source can make progress for `GIVE_UP_S` (why, per peer, in `failures`)."""
        partial = self._partials.setdefault(
            ann.sha256, Partial(ann.window, ann.size, ann.pieces))
        job = FetchJob(partial, ann, failures, load=self._source_load,
                       rates=self._source_rates)
        rng = np.random.default_rng()
        if not await self._get_list(job):
            return None
        with contextlib.suppress(Exception):  # others learn that we serve its pieces
            await self._announce_serving(ann)
        send, recv = trio.open_memory_channel[tuple[int, str, Any]](math.inf)
        self._jobs.append(job)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_haves, job)
                while partial.whole is None and len(partial.pieces) < partial.count:
                    self._launch(job, rng, nursery, send)
                    if self._stuck(job):
                        nursery.cancel_scope.cancel()
                        return None
                    with trio.move_on_after(HAVE_EVERY_S):
                        piece, peer, result = await recv.receive()
                        if piece >= 0:  # else: a fetch slot came free
                            await self._settle(job, piece, peer, result)
                nursery.cancel_scope.cancel()
        finally:
            self._jobs.remove(job)
            self._fetch_slots.unwatch(send)
        blob = partial.whole if partial.whole is not None else partial.blob()
        if hashlib.sha256(blob).digest() != ann.sha256:  # the announcer signed a bad list
            failures[ann.peer_id] = "PeerFault: pieces do not make the announced blob"
            await self._penalize(ann.peer_id, "announced pieces that do not make its blob")
            del self._partials[ann.sha256]
            return None
        partial.complete(blob)  # its pieces are served until the window is forgotten
        return blob

    def _stuck(self, job: FetchJob) -> bool:
        now = trio.current_time()
        if job.asked:
            job.stuck_since = None
            return False
        if job.stuck_since is None:
            job.stuck_since = now
        return now - job.stuck_since >= GIVE_UP_S

    async def _get_list(self, job: FetchJob) -> bool:
        ann = job.ann
        if job.partial.hashes is not None:
            return True
        for peer in dict.fromkeys([ann.peer_id, *self._sources.get(ann.sha256, {})]):
            try:
                job.partial.accept_list(await self._ask(peer, ann.sha256, LIST,
                                                        32 * job.partial.count))
                return True
            except PeerTooSlow as exc:
                job.failures[peer] = f"PeerTooSlow: {exc}"
                self._slowed(peer, str(exc))
            except PeerFault as exc:
                job.failures[peer] = f"PeerFault: {exc}"
                job.faulted.add(peer)
                await self._penalize(peer, str(exc))
            except Exception as exc:  # unavailable, dial errors: the next one
                job.failures[peer] = f"{type(exc).__name__}: {exc}"
        return False

    def _launch(self, job: FetchJob, rng: np.random.Generator, nursery: trio.Nursery,
                send: Any) -> None:
        while len(job.asked) - len(job.finishing) < self._fetch_slots.limit:
            now = trio.current_time()
            choice = job.choose(now, rng)
            if choice is None and not any(other.can_choose(now) for other in self._jobs
                                          if other is not job):
                choice = job.choose(now, rng, PER_SOURCE_ALONE)  # a lone fast source
            if choice is None or not self._fetch_slots.take():
                if choice is not None or job.waiting_on_load():
                    job.stuck_since = None  # waiting for the node's own requests is not
                    self._fetch_slots.watch(send)  # being stuck: woken when one ends
                return
            piece, peer = choice
            job.asked[piece] = peer
            job.load[peer] += 1  # the node's count: `_one_piece` takes it back
            nursery.start_soon(self._one_piece, job, peer, piece, send)

    async def _one_piece(self, job: FetchJob, peer: str, piece: int, send: Any) -> None:
        asked = trio.current_time()
        released = False

        def release() -> None:  # the source and the slot may take the next request
            nonlocal released
            if not released:
                released = True
                self._source_load[peer] -= 1
                self._fetch_slots.give()

        def almost_done() -> None:  # ask again now: the answer arrives as this one ends
            job.finishing.add(piece)
            release()
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError,
                                     trio.ClosedResourceError):
                send.send_nowait(WAKE)

        try:
            with trio.fail_after(PIECE_TIMEOUT_S):
                result: Any = await self._ask(peer, job.ann.sha256, piece, PIECE_BYTES,
                                              almost_done)
            # what this source gave us, request to last byte: the next choice's guide
            self._rate_seen(peer, len(result) / max(trio.current_time() - asked, 1e-6))
        except Exception as exc:  # reported, judged by `_settle`
            result = exc
            if not isinstance(exc, PeerUnavailable):  # slow, silent or broken (busy is
                self._rate_seen(peer, 0.0)  # honest): last choice until it serves
        finally:
            release()
        await send.send((piece, peer, result))

    def _rate_seen(self, peer: str, rate: float) -> None:
        """Remember `peer`'s last rate; the `RATES_KEPT` sources heard from last are kept."""
        self._source_rates.pop(peer, None)
        self._source_rates[peer] = rate
        while len(self._source_rates) > RATES_KEPT:
            del self._source_rates[next(iter(self._source_rates))]

    async def _settle(self, job: FetchJob, piece: int, peer: str, result: Any) -> None:
        del job.asked[piece]
        job.finishing.discard(piece)
        if isinstance(result, bytes):
            try:
                job.partial.accept(piece, result)
                job.strikes[peer] = 0
                return
            except PeerFault as exc:
                result = exc
        if isinstance(result, PeerTooSlow):  # counted like a failure, then the strikes below
            self._slowed(peer, str(result))
        elif isinstance(result, PeerFault):
            job.faulted.add(peer)
            job.failures[peer] = f"PeerFault: {result}"
            await self._penalize(peer, str(result))
            return
        job.failures[peer] = f"{type(result).__name__}: {result}"
        if isinstance(result, PeerUnavailable) and str(result) == "not found" \
                and peer in job.views:
            job.views[peer][piece] = False
        job.resting[peer] = trio.current_time() + HAVE_EVERY_S
        if str(result) != "busy":
            job.strikes[peer] += 1
            if job.strikes[peer] >= ATTEMPTS_PER_SOURCE:  # gone: no blame, not asked again
                job.faulted.add(peer)

    def _candidates(self, job: FetchJob) -> list[str]:
        """Who may hold pieces: the announcers of the blob, then connected peers."""
        announced = list(self._sources.get(job.ann.sha256, {}))
        connected = [p.to_base58() for p in self._host.get_connected_peers()]
        return [p for p in dict.fromkeys([job.ann.peer_id, *announced, *connected])
                if p not in job.faulted]

    async def _watch_haves(self, job: FetchJob) -> None:
        """Ask holders what they have, now and in every round of the node's clock
        (node/mesh/p2p_haves.py), except those known to hold everything: the announcer
        has signed that it does (its view is set when the job is made), and a holder
        keeps a whole blob until it forgets the window (then its "not found" clears the
        piece from its view)."""
        while True:
            peers = [p for p in self._candidates(job) if p != job.ann.peer_id
                     and not (p in job.views and job.views[p].all())]
            async with trio.open_nursery() as nursery:
                for peer in peers[:HAVE_PEERS]:
                    nursery.start_soon(self._have_of, job, peer)
            await trio.sleep_until(next_round(trio.current_time()))

    async def _have_of(self, job: FetchJob, peer: str) -> None:
        with trio.move_on_after(HAVE_EVERY_S * 4):
            try:
                job.views[peer] = await self._have_batched(peer, job.ann.sha256,
                                                           job.partial.count)
            except Exception:  # no pieces there (yet), or gone: ask again next round
                job.views.pop(peer, None)

