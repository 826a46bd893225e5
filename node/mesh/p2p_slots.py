"""`FetchSlots`: the requests a node keeps open at once over all its fetches (trio side;
imported only by `node.mesh.p2p*`).

A slot is a share of the node's downlink (`fetch_slots`: `SLOT_RATE` each, 4 when the
downlink is unknown). A piece request takes one; a whole-blob stream, whose source
must keep up a higher minimum rate, takes `whole_cost` of them. Without one limit
over all fetches, a node gathering many blobs at once splits its own downlink below
the rate its fetches demand and cuts honest sources off as too slow.

Turns are kept in order: while an `acquire` waits, `take` refuses, so piece requests
(which take one slot whenever one is free) cannot starve a whole-blob stream waiting
for two. Swarm fetches that found no slot `watch` with a channel and are sent a wake
token (`WAKE`) when one frees.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import trio

from node.mesh.p2p_pieces import PIECE_MIN_RATE

WAKE = (-1, "", None)  # what a watching fetch receives when a slot frees


def whole_cost(min_rate: float, limit: int) -> int:
    """Slots one whole-blob stream takes: its minimum rate in piece minimums (2 for the
    default 256 KiB/s), at most the node's limit, so it can always run."""
    return max(1, min(limit, math.ceil(min_rate / PIECE_MIN_RATE)))


@dataclass
class _Turn:
    n: int
    event: trio.Event = field(default_factory=trio.Event)
    granted: bool = False


class FetchSlots:
    """`limit` slots shared by every fetch of one node."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a node needs at least one fetch slot")
        self.limit = limit
        self.used = 0
        self._turns: deque[_Turn] = deque()
        self._watchers: set[Any] = set()

    def take(self, n: int = 1) -> bool:
        """`n` slots now if they are free and nobody waits for a turn."""
        if self._turns or self.used + n > self.limit:
            return False
        self.used += n
        return True

    async def acquire(self, n: int) -> None:
        """Wait for `n` slots (at most `limit`), in turn."""
        if self.take(n):
            return
        turn = _Turn(min(n, self.limit))
        self._turns.append(turn)
        try:
            await turn.event.wait()
        except BaseException:  # cancelled while waiting: its turn (or its grant) goes back
            if turn.granted:
                self.give(turn.n)
            else:
                self._turns.remove(turn)
                self._grant()
            raise

    @contextlib.asynccontextmanager
    async def held(self, n: int) -> AsyncIterator[None]:
        await self.acquire(n)
        try:
            yield
        finally:
            self.give(min(n, self.limit))

    def give(self, n: int = 1) -> None:
        """Free `n` slots: the waiting turns first, then every watcher is woken (one of
        them takes the slot, the others watch again)."""
        self.used -= n
        self._grant()
        watchers, self._watchers = self._watchers, set()
        for send in watchers:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                     trio.WouldBlock):
                send.send_nowait(WAKE)

    def watch(self, send: Any) -> None:
        self._watchers.add(send)

    def unwatch(self, send: Any) -> None:
        self._watchers.discard(send)

    def _grant(self) -> None:
        while self._turns and self.used + self._turns[0].n <= self.limit:
            turn = self._turns.popleft()
            self.used += turn.n
            turn.granted = True
            turn.event.set()
