"""Flows and their fair rates for the dissemination simulator (node/sim/dissemination.py):
max-min fair sharing of capped resources, and the flows in flight kept in preallocated
arrays. Pure; no clock, no randomness.
"""

from __future__ import annotations

import numpy as np


def maxmin_rates(uses: np.ndarray, caps: np.ndarray,
                 weights: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rates (progressive filling) of flows, each using the resources in
    its row of `uses` (flows x k resource indices) under `caps` (bytes/s); a flow at
    rate r takes `weights` x r of each (1 where not given)."""
    w = np.ones(uses.shape) if weights is None else weights
    rates = np.zeros(len(uses))
    remaining = caps.astype(float).copy()
    active = np.ones(len(uses), dtype=bool)
    while active.any():
        counts = np.bincount(uses[active].ravel(), w[active].ravel(), minlength=len(caps))
        used = counts > 0
        step = float((remaining[used] / counts[used]).min())
        rates[active] += step
        remaining -= step * counts
        saturated = remaining <= 1e-9 * caps
        active &= ~(saturated[uses] & (w > 0)).any(axis=1)
    return rates


class Flows:
    """Flows in preallocated arrays; `live` marks the slots in use."""

    def __init__(self, capacity: int) -> None:
        self.src = np.zeros(capacity, dtype=int)
        self.dst = np.zeros(capacity, dtype=int)
        self.piece = np.zeros(capacity, dtype=int)
        self.left = np.zeros(capacity)
        self.asked = np.zeros(capacity)  # when it was requested
        self.ready = np.zeros(capacity)  # when its bytes start to flow
        self.live = np.zeros(capacity, dtype=bool)
        self.handed = np.zeros(capacity, dtype=bool)  # its request slot given back
        self._free = list(range(capacity - 1, -1, -1))

    def add(self, src: int, dst: int, piece: int, size: float, asked: float,
            ready: float) -> None:
        if not self._free:  # handed-over flows still finishing: make room
            self._grow()
        i = self._free.pop()
        self.src[i], self.dst[i], self.piece[i] = src, dst, piece
        self.left[i], self.asked[i], self.ready[i], self.live[i] = size, asked, ready, True
        self.handed[i] = False

    def remove(self, i: int) -> None:
        self.live[i] = False
        self._free.append(i)

    def _grow(self) -> None:
        n = len(self.live)
        for name in ("src", "dst", "piece", "left", "asked", "ready", "live", "handed"):
            old = getattr(self, name)
            setattr(self, name, np.concatenate([old, np.zeros_like(old)]))
        self._free = list(range(2 * n - 1, n - 1, -1))
