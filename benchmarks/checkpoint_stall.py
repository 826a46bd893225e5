"""What a checkpoint costs the window loop: written in the loop, against written behind it.

A real miner service (node/runtime/miner.py, on the in-memory mesh of
tests/support/daemons.py) checkpoints θ per model size, both ways in the same run:
`save_checkpoint()` waits for the whole checkpoint (disk write with fsync, the signed
public checkpoint, its chunks held on the mesh), as the loop did before;
`save_checkpoint(wait=False)` waits for the snapshot alone (θ and the error feedback
copied by the engine), as the loop does now, the rest written while the next window
trains. Prints the loop's wait both ways, their ratio, and how long the background
write took.

    python benchmarks/checkpoint_stall.py --models tiny small 150m   # ~2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.daemons import SPEC, MemNet


async def measure(model: str, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        net = MemNet(Path(tmp), spec=dataclasses.replace(SPEC, model=model))
        miner = net.miner("m0", 0)
        await miner.mesh.start()
        try:
            inline, snapshot, behind = [], [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                await miner.save_checkpoint()
                inline.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await miner.save_checkpoint(wait=False)
                snapshot.append(time.perf_counter() - t0)
                await miner.checkpointer.wait()
                behind.append(time.perf_counter() - t0)
        finally:
            await miner.mesh.stop()
    params = sum(math.prod(t.shape) for t in miner.manifest)
    a, b, c = (statistics.median(v) for v in (inline, snapshot, behind))
    return {"model": model, "params": params, "theta_mib": round(4 * params / 2**20, 1),
            "in_loop_s": round(a, 3), "snapshot_s": round(b, 3), "written_by_s": round(c, 3),
            "ratio": round(b / a, 4), "repeats": repeats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "small", "150m"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, help="append the JSON lines here")
    args = p.parse_args()
    rows = [asyncio.run(measure(m, args.repeats)) for m in args.models]
    print(f"{'model':<6} {'θ MiB':>8} {'in loop s':>10} {'snapshot s':>11} {'ratio':>7} "
          f"{'written by s':>13}")
    for r in rows:
        print(f"{r['model']:<6} {r['theta_mib']:>8.1f} {r['in_loop_s']:>10.3f} "
              f"{r['snapshot_s']:>11.3f} {r['ratio']:>7.3f} {r['written_by_s']:>13.3f}")
    for r in rows:
        print(json.dumps(r))
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
