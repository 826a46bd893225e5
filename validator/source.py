"""Where contributions come from: a small Protocol and an in-memory implementation.

The validator only needs, per window, every envelope's wire bytes with its
arrival time and order as *this* validator observed them (never the sender's
claim). The libp2p mesh implements the same Protocol later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from node.mesh.board import MemoryBoard


@dataclass(frozen=True)
class Arrival:
    data: bytes
    at: float  # seconds, on the validator's clock
    order: int  # 0 = first seen in this window


class ContributionSource(Protocol):
    def contributions(self, window: int) -> list[Arrival]: ...


class BoardSource:
    """Wraps a `MemoryBoard`: publishing through it records the arrival time."""

    def __init__(self, board: MemoryBoard, clock: Callable[[], float]) -> None:
        self.board = board
        self.clock = clock
        self._times: dict[tuple[int, bytes], float] = {}

    def publish(self, window: int, signer: bytes, data: bytes, at: float | None = None) -> None:
        self.board.publish(window, signer, data)
        key = (window, hashlib.sha256(data).digest())
        self._times[key] = self.clock() if at is None else at

    def contributions(self, window: int) -> list[Arrival]:
        out: list[Arrival] = []
        # without an rng the board returns posts in publication (arrival) order
        for order, data in enumerate(self.board.collect(window)):
            at = self._times.get((window, hashlib.sha256(data).digest()), float(order))
            out.append(Arrival(data=data, at=at, order=order))
        out.sort(key=lambda a: (a.at, a.order))
        return [Arrival(a.data, a.at, i) for i, a in enumerate(out)]
