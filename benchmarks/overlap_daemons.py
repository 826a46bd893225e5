"""A miner's gap between two windows' training, synchronous and overlapped, in the daemons.

The real miner services (node/runtime/miner.py) run on the in-memory chain and mesh of
tests/support/daemons.py; the mesh holds every fetch for `--latency` seconds, standing
for the time a window's contributions take to arrive. Per window the script notes when
the chain's window began and when each miner started training it. The gap between the
two is what stands between one window's compute and the next on the miner's critical
path: synchronous, the gathering of the window just ended (up to the grace period) plus
the outer step and evaluation; overlapped (run spec `overlap`), the outer step and
evaluation alone. A miner whose windows are sized to its work computes C / (C + gap)
of the time (C: its training seconds per window).

    python benchmarks/overlap_daemons.py --latency 1.5   # ~2 minutes on 2 cores
    python benchmarks/overlap_daemons.py --latency 2.5
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.mesh import MemoryNetwork
from node.runtime.core import NodeConfig
from tests.support.daemons import SPEC, MemNet


class TimedNet(MemNet):
    """MemNet with a fetch latency, the operator's grace period, and the times each
    window began (from the block clock) and each miner's training began."""

    def __init__(self, tmp: Path, *, overlap: bool, latency: float, grace: float,
                 inner_steps: int) -> None:
        super().__init__(tmp, spec=dataclasses.replace(SPEC, overlap=overlap,
                                                       inner_steps=inner_steps))
        self.network = MemoryNetwork(latency=latency)
        self.grace = grace
        self.began: dict[int, float] = {}  # window -> when its first block was mined
        self.trained: dict[str, dict[int, tuple[float, float]]] = {}  # name -> w -> (t0, t1)
        self.phases: dict[str, list[float]] = {}  # part of the gap -> seconds per call

    def config(self, name: str) -> NodeConfig:
        return dataclasses.replace(super().config(name), gather_grace=self.grace)

    def timed_miner(self, name: str, n: int) -> Any:
        miner = self.miner(name, n)
        train, spans = miner.engine.train, self.trained.setdefault(name, {})

        def timed(batches: Any, first_step: int) -> Any:
            t0 = time.time()
            try:
                return train(batches, first_step)
            finally:
                spans[first_step // self.spec.inner_steps] = (t0, time.time())

        miner.engine.train = timed  # type: ignore[method-assign]
        for part in ("apply", "evaluate"):
            setattr(miner.engine, part, self._timed(part, getattr(miner.engine, part)))
        save = miner.save_checkpoint

        async def timed_save(**kwargs: Any) -> None:  # what the window loop waits for
            t0 = time.time()
            await save(**kwargs)
            self.phases.setdefault("checkpoint", []).append(time.time() - t0)

        miner.save_checkpoint = timed_save  # type: ignore[method-assign]
        return miner

    def _timed(self, part: str, call: Any) -> Any:
        def timed(*args: Any) -> Any:
            t0 = time.time()
            try:
                return call(*args)
            finally:
                self.phases.setdefault(part, []).append(time.time() - t0)
        return timed

    async def tick(self) -> None:
        while not self.stop.is_set():
            await asyncio.sleep(self.block_time)
            with self.lock:
                before = self.chain.window()
                self.chain.mine(1)
                if self.chain.window() != before:
                    self.began[self.chain.window()] = time.time()


async def measure(overlap: bool, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        net = TimedNet(Path(tmp), overlap=overlap, latency=args.latency, grace=args.grace,
                       inner_steps=args.inner_steps)
        ticker = asyncio.create_task(net.tick())
        try:
            miners = [net.timed_miner(f"m{i}", i) for i in range(args.miners)]
            for m in miners:
                net.start(m)
            await net.until(lambda: all(len(m.history) >= args.windows for m in miners),
                            60 + 8 * args.windows, f"{args.windows} windows")
        finally:
            await net.close()
            ticker.cancel()
    gaps, compute = [], []
    for spans in net.trained.values():
        for w, (t0, t1) in sorted(spans.items())[1:]:  # the first follows a catch-up
            if w in net.began:
                gaps.append(t0 - net.began[w])
                compute.append(t1 - t0)
    last = min(m.history[-1]["window"] for m in miners)
    digests = {p["param_digest"] for m in miners for p in m.history if p["window"] == last}
    inputs = [p["contributions"] for m in miners for p in m.history[1:]]
    gap, c = statistics.median(gaps), statistics.median(compute)
    return {"mode": "overlapped" if overlap else "synchronous", "latency_s": args.latency,
            "inner_steps": args.inner_steps,
            "grace_s": args.grace, "windows": len(gaps), "gap_s": round(gap, 3),
            "gap_max_s": round(max(gaps), 3), "compute_s": round(c, 3),
            "utilisation": round(c / (c + gap), 4),
            "contributions_min": min(inputs), "contributions_max": max(inputs),
            **{f"{part}_s": round(statistics.median(v), 3) for part, v in net.phases.items()},
            "theta_identical": len(digests) == 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, default=1.5, help="seconds each fetch takes")
    p.add_argument("--grace", type=float, default=3.0, help="gather grace period (s)")
    p.add_argument("--windows", type=int, default=6)
    p.add_argument("--miners", type=int, default=2)
    p.add_argument("--inner-steps", type=int, default=16, help="H: the compute per window")
    p.add_argument("--out", type=Path, help="append the JSON lines here")
    args = p.parse_args()
    rows = [asyncio.run(measure(overlap, args)) for overlap in (False, True)]
    print(f"{'mode':<12} {'gap s':>6} {'max':>6} {'compute s':>9} {'util':>6} "
          f"{'inputs':>6} {'θ same':>6}")
    for r in rows:
        print(f"{r['mode']:<12} {r['gap_s']:>6.2f} {r['gap_max_s']:>6.2f} {r['compute_s']:>9.2f} "
              f"{r['utilisation']:>6.1%} {r['contributions_min']:>3}-{r['contributions_max']:<2} "
              f"{r['theta_identical']!s:>6}")
    print(f"gap ratio overlapped / synchronous: {rows[1]['gap_s'] / rows[0]['gap_s']:.2f}")
    print("in the gap (median s per call): " + ", ".join(
        f"{part} {rows[1][f'{part}_s']:.3f}" for part in ("apply", "evaluate", "checkpoint")
        if f"{part}_s" in rows[1]) + " (the checkpoint every 2 windows)")
    for r in rows:
        print(json.dumps(r))
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
