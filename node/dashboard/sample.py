"""Synthetic snapshots: for tests, screenshots in the docs, and trying the page out.

`StaticProvider` serves a fixed snapshot; `GrowingProvider` one that gains a
window every `interval` seconds, like a live run.
"""

from __future__ import annotations

import hashlib
import math
import time

from node.status import (
    SCHEMA,
    BalanceRow,
    ChainSnapshot,
    NodeSnapshot,
    ScoreRow,
    Snapshot,
    TimelineEvent,
    WindowPoint,
)

EVENTS = ("trained", "published", "gathered 3", "applied")


def _address(i: int) -> str:
    return "0x" + hashlib.sha256(f"addr{i}".encode()).hexdigest()[:40]


def _history(i: int, windows: int) -> list[WindowPoint]:
    return [WindowPoint(
        window=w, heldout_loss=4.0 * math.exp(-w / 12) + 1.5 + 0.02 * i,
        train_loss=4.1 * math.exp(-w / 12) + 1.45, bytes_out=24_000 + 500 * i + 37 * w,
        bytes_in=72_000 + 900 * i + 11 * w, contributions=3, compression_ratio=140.0,
        seconds=2.0 + 0.1 * i, param_digest=hashlib.sha256(f"theta{w}".encode()).hexdigest(),
    ) for w in range(windows)]


def _timeline(windows: int, now: float) -> list[TimelineEvent]:
    start = max(0, windows - 6)
    return [TimelineEvent(t=now - 2.0 * (windows - w) + 0.4 * k, window=w, event=e)
            for w in range(start, windows) for k, e in enumerate(EVENTS)]


def _scores(miners: int, reason: str) -> list[ScoreRow]:
    return [ScoreRow(uid=u, address=_address(u), status="scored" if u else "rejected",
                     reason=reason if u == 0 else "ok", score=0.1 * (u + 1), mu=25.0 + u,
                     sigma=8.3 - u, weight=(u + 1) / (miners * (miners + 1) / 2))
            for u in range(miners)]


def sample_snapshot(*, miners: int = 3, validators: int = 1, windows: int = 8,
                    now: float | None = None, reason: str = "stale envelope",
                    run: str = "sample") -> Snapshot:
    """A consistent snapshot of `miners + validators` nodes after `windows` windows;
    `reason` is the rejection reason of uid 0 (tests pass markup through it)."""
    now = time.time() if now is None else now
    nodes: list[NodeSnapshot] = []
    for i in range(miners + validators):
        is_val = i >= miners
        nodes.append(NodeSnapshot(
            name=f"validator-{i - miners}" if is_val else f"miner-{i}",
            role="validator" if is_val else "miner", address=_address(i),
            peer_id=f"12D3KooW{i:04d}sample", state="training", window=windows,
            peers=miners + validators - 1 - (i % 2), bytes_in=80_000 * windows,
            bytes_out=25_000 * windows, history=_history(i, windows),
            timeline=_timeline(windows, now), scores=_scores(miners, reason) if is_val else []))
    balances = [BalanceRow(address=_address(i), role="miner" if i < miners else "validator",
                           uid=i, stake_wei=10**18 * (i + 1), claimable_wei=10**15 * windows * i)
                for i in range(miners + validators)]
    chain = ChainSnapshot(kind="embedded", contract=_address(99), block=10 * windows + 3,
                          window=windows, epoch=windows // 4, blocks_per_window=10,
                          windows_per_epoch=4, aggregation_set=list(range(miners)),
                          balances=balances)
    return Snapshot(schema=SCHEMA, run=run, generated_at=now, chain=chain, nodes=nodes)


class StaticProvider:
    """Serves the snapshot it was given (mutable: tests swap `snap` or `fail`)."""

    def __init__(self, snap: Snapshot, *, healthy: tuple[bool, str] = (True, "ok")) -> None:
        self.snap = snap
        self.healthy = healthy
        self.fail: Exception | None = None

    async def snapshot(self) -> Snapshot:
        if self.fail is not None:
            raise self.fail
        return self.snap

    def health(self) -> tuple[bool, str]:
        return self.healthy


class GrowingProvider:
    """A run in progress: `start` windows at first, one more every `interval` seconds."""

    def __init__(self, *, start: int = 3, interval: float = 0.5, miners: int = 3,
                 validators: int = 1, reason: str = "stale envelope") -> None:
        self.start, self.interval = start, interval
        self.miners, self.validators, self.reason = miners, validators, reason
        self.t0 = time.monotonic()

    def windows(self) -> int:
        return self.start + int((time.monotonic() - self.t0) / self.interval)

    async def snapshot(self) -> Snapshot:
        return sample_snapshot(windows=self.windows(), miners=self.miners,
                               validators=self.validators, reason=self.reason, run="growing")

    def health(self) -> tuple[bool, str]:
        return True, f"{self.windows()} windows"
