"""Bitfields in batches for `P2PMesh`: one request per holder per round, for every blob
the node gathers (a mixin; trio side of the bridge).

A swarming fetch learns who holds which pieces by asking each holder for its
bitfield every `HAVE_EVERY_S` (node/mesh/p2p_swarm.py). Asked one blob at a time,
a node gathering 17 contributions from 16 holders opened 544 streams a second
for that alone, each a protocol negotiation and a few frames at both ends. Here
the asks made of one holder within `BATCH_WAIT_S` leave as one request on
`/gradmesh/haves/1`, and the fetches' rounds keep to one clock so that their
asks meet.

Wire: the request is a count k (one byte, 1 to `MAX_BATCH`) and k SHA-256
digests; the answer is, per digest in order, a piece header (status and length,
node/mesh/p2p_pieces.py) and, when the status is OK, the bitfield. A digest the
holder lacks is NOT_FOUND for that digest alone. Each request counts once against
the asker's request bucket, like any piece request.

One stream carries many requests: the holder answers them in order until the
asker closes the stream or sends nothing for `SERVE_IDLE_S`, and the asker keeps
the stream of its last fully read answer for the holder's next round (for at
most `KEEP_S`). A holder keeps at most `KEPT_PER_PEER` such streams open for
one asker (an asker needs one); past those, a stream gets one answer and is
closed, as every stream was before. A stream per request cost a protocol
negotiation and the stream's opening and closing at both ends: 3.4-3.8 CPU ms
a request on loopback against 1.8-2.1 on a kept stream (`python benchmarks/request_cost_bench.py`).
In the 8-peer lab, asking half as often saved ~3 of the nodes' ~38 CPU seconds
(docs/mesh.md, "Bitfields in batches"). A kept stream that fails is dropped and
the request goes out once more on a fresh one.

Must never: let one bad answer touch a blob other than its own beyond failing
the request it came in (every waiter of a failed request sees the same error,
and asks again next round).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from node.mesh.p2p_blob import (
    NOT_FOUND,
    OK,
    PeerFault,
    PeerTooSlow,
    PeerUnavailable,
    read_exact,
    serve_guarded,
)
from node.mesh.p2p_pieces import HAVE, HAVE_EVERY_S, HEADER_LEN, piece_header, read_bitfield

HAVES_PROTOCOL = "/gradmesh/haves/1"
MAX_BATCH = 64  # digests per request
BATCH_WAIT_S = 0.01  # how long an ask waits for others to the same holder
ANSWER_TIMEOUT_S = 4 * HAVE_EVERY_S
KEEP_S = 10.0  # an asker reuses a stream idle at most this long
SERVE_IDLE_S = 3 * KEEP_S  # a holder ends a stream with no request for this long
KEPT_PER_PEER = 2  # streams a holder keeps open for one asker; more get one answer each


def haves_request(digests: list[bytes]) -> bytes:
    if not 1 <= len(digests) <= MAX_BATCH or any(len(d) != 32 for d in digests):
        raise ValueError(f"1 to {MAX_BATCH} digests of 32 bytes")
    return bytes([len(digests)]) + b"".join(digests)


def next_round(now: float) -> float:
    """When the next round of bitfield asks starts: rounds keep to one clock, so the
    asks of a node's fetches meet in one batch per holder."""
    return (math.floor(now / HAVE_EVERY_S) + 1) * HAVE_EVERY_S


@dataclass
class _Batch:
    """The asks waiting to go to one holder: per digest, its piece count."""

    counts: dict[bytes, int] = field(default_factory=dict)
    done: trio.Event = field(default_factory=trio.Event)
    results: dict[bytes, np.ndarray | Exception] = field(default_factory=dict)


class HaveBatches:
    """The bitfield half of `P2PMesh`; the attributes below are the mesh's."""

    _nursery: trio.Nursery | None
    _in: int

    if TYPE_CHECKING:  # from the blob and piece mixins
        async def _admit(self, stream: Any) -> str | None: ...
        async def _open(self, peer: str, protocol: str, first: bytes = b"",
                        credit: int = 0) -> Any: ...
        def _piece_body(self, digest: bytes, index: int) -> bytes | memoryview | None: ...

    _batches: dict[str, _Batch] | None = None
    _kept: dict[str, tuple[Any, float]] | None = None  # holder -> (stream, last answer)
    _haves_open: Counter[str] | None = None  # asker -> its haves streams being served

    # ---- asking --------------------------------------------------------------------------
    async def _have_batched(self, peer: str, digest: bytes, count: int) -> np.ndarray:
        """`peer`'s bitfield of `digest` (`count` pieces), asked together with whatever
        else this node asks of `peer` within `BATCH_WAIT_S`."""
        if self._batches is None:
            self._batches = {}
        batch = self._batches.get(peer)
        if batch is None or len(batch.counts) >= MAX_BATCH:
            batch = self._batches[peer] = _Batch()
            assert self._nursery is not None
            self._nursery.start_soon(self._send_batch, peer, batch)
        batch.counts[digest] = count
        await batch.done.wait()
        result = batch.results.get(digest, PeerUnavailable("no answer"))
        if isinstance(result, Exception):
            raise result
        return result

    async def _send_batch(self, peer: str, batch: _Batch) -> None:
        await trio.sleep(BATCH_WAIT_S)
        if self._batches is not None and self._batches.get(peer) is batch:
            del self._batches[peer]  # later asks start the next batch
        try:
            with trio.fail_after(ANSWER_TIMEOUT_S):
                batch.results.update(await self._ask_haves(peer, batch.counts))
        except Exception as exc:  # every waiter hears it, and asks again next round
            batch.results.update(dict.fromkeys(batch.counts, exc))
        finally:
            batch.done.set()

    async def _ask_haves(self, peer: str, counts: dict[bytes, int]
                         ) -> dict[bytes, np.ndarray | Exception]:
        request = haves_request(list(counts))
        stream = self._reuse(peer)
        if stream is not None:
            try:
                await stream.write(request)
                return await self._read_haves(peer, stream, counts)
            except PeerFault:
                raise
            except Exception:  # the holder ended it, or the connection died: afresh
                pass
        stream = await self._open(peer, HAVES_PROTOCOL, request)
        return await self._read_haves(peer, stream, counts)

    async def _read_haves(self, peer: str, stream: Any, counts: dict[bytes, int]
                          ) -> dict[bytes, np.ndarray | Exception]:
        """Every digest's answer; the stream is kept for the next round only when the
        whole answer was read, else ended (what is left of it is not trusted)."""
        kept = False
        try:
            answers = {d: await self._read_have(stream, n) for d, n in counts.items()}
            kept = self._keep(peer, stream)
            return answers
        finally:
            if not kept:
                with trio.move_on_after(2), contextlib.suppress(Exception):
                    await stream.reset()

    def _reuse(self, peer: str) -> Any:
        """The stream kept for `peer`, taken (one request on it at a time); None when
        there is none, or it has been idle longer than `KEEP_S`."""
        stream, since = (self._kept or {}).pop(peer, (None, 0.0))
        if stream is not None and trio.current_time() - since > KEEP_S:
            self._nursery_close(stream)
            return None
        return stream

    def _keep(self, peer: str, stream: Any) -> bool:
        if self._kept is None:
            self._kept = {}
        if peer in self._kept:  # a batch that ran beside another: one is enough
            return False
        self._kept[peer] = (stream, trio.current_time())
        return True

    def _nursery_close(self, stream: Any) -> None:
        async def close() -> None:
            with trio.move_on_after(2), contextlib.suppress(Exception):
                await stream.close()
        if self._nursery is not None:
            self._nursery.start_soon(close)

    async def _read_have(self, stream: Any, count: int) -> np.ndarray | Exception:
        """One digest's answer: its bitfield, or PeerUnavailable when the holder lacks it;
        a broken answer raises PeerFault (the rest of the stream cannot be trusted)."""
        header = await read_exact(stream, HEADER_LEN, 5.0)
        status, length = header[0], int.from_bytes(header[1:], "big")
        if status == NOT_FOUND and length == 0:
            return PeerUnavailable("not found")
        if status != OK or length != -(-count // 8):
            raise PeerFault(f"bad bitfield header (status {status}, length {length})")
        self._in += length
        return read_bitfield(await read_exact(stream, length, 5.0), count)

    # ---- serving -------------------------------------------------------------------------
    async def _guarded_haves_handler(self, stream: Any) -> None:
        await serve_guarded(self._serve_haves, stream, "haves")

    async def _serve_haves(self, stream: Any) -> None:
        """Answer requests in order until the asker ends the stream or goes quiet; an
        asker with `KEPT_PER_PEER` streams open already gets one answer per stream."""
        peer = str(stream.muxed_conn.peer_id.to_base58())
        if self._haves_open is None:
            self._haves_open = Counter()
        keep = self._haves_open[peer] < KEPT_PER_PEER
        self._haves_open[peer] += 1
        try:
            while await self._serve_have_request(stream):
                if not keep:
                    await stream.close()
                    return
        finally:
            self._haves_open[peer] -= 1
            if self._haves_open[peer] <= 0:
                del self._haves_open[peer]

    async def _serve_have_request(self, stream: Any) -> bool:
        """One request answered: True; the stream ended (or was refused): False."""
        try:  # the next request's count, or the end of the stream
            first = await read_exact(stream, 1, SERVE_IDLE_S)
        except (PeerUnavailable, PeerTooSlow):
            with trio.move_on_after(2), contextlib.suppress(Exception):
                await stream.close()
            return False
        if await self._admit(stream) is None:
            return False
        k = first[0]
        if not 1 <= k <= MAX_BATCH:
            await stream.reset()
            return False
        raw = await read_exact(stream, 32 * k, 5.0)
        await stream.write(b"".join(self._have_answer(raw[i:i + 32])
                                    for i in range(0, len(raw), 32)))
        return True

    def _have_answer(self, digest: bytes) -> bytes:
        body = self._piece_body(digest, HAVE)
        if body is None:
            return piece_header(NOT_FOUND)
        return piece_header(OK, len(body)) + bytes(body)

