"""CPU cost of one miner over 2 FSDP2 ranks (gloo) against one process, per window.

A window = H inner steps on the run's batch, encode (SparseLoCo), and the outer step
with the miner's own contribution and one other; the same work in both, timed after a
warm-up window, in the same run. On a CPU the ranks share cores, so this measures
the cost of sharding (collectives, gathers), not a speed-up.

    .venv/bin/python benchmarks/sharded_bench.py --models tiny small --windows 3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from node.engine.base import Engine
from node.engine.config import EngineConfig
from node.engine.data import window_batch
from node.engine.inner import InnerConfig
from node.engine.local import EngineSpec, LocalEngine
from node.engine.ranks import RankGroup
from node.outer.step import select
from protocol.envelope import BaseModel, Expectation, seal
from protocol.identity import Identity

RUN = "bench"
KEYS = [Identity.from_secret(bytes([n]) * 32) for n in (1, 2)]


def window(engine: Engine, w: int, batches: list[torch.Tensor], other: bytes) -> float:
    start = time.perf_counter()
    engine.train(batches)
    wire = seal(KEYS[0], run_id=RUN, window=w, base=BaseModel(w, bytes(32)), codec=engine.codec,
                manifest=engine.manifest, payload=engine.encode())
    chosen, _ = select([wire, other], Expectation(RUN, w, engine.codec, engine.manifest),
                       {k.address for k in KEYS})
    engine.apply(chosen)
    engine.digest()
    return time.perf_counter() - start


def bench(model: str, windows: int, steps: int, rows: int, seq_len: int) -> dict[str, object]:
    spec = EngineSpec(model=model, inner=InnerConfig(lr=1e-3, warmup_steps=1, total_steps=100))
    tokens = np.random.default_rng(0).integers(0, 256, 1_000_000, dtype=np.uint16)
    batches = [[window_batch(tokens, seed=0, window=w, uid=0, step=s, batch_size=rows,
                             seq_len=seq_len) for s in range(steps)] for w in range(windows + 1)]
    donor = LocalEngine(spec)
    donor.train(batches[0])
    other_payload = donor.encode()
    others = [seal(KEYS[1], run_id=RUN, window=w, base=BaseModel(w, bytes(32)),
                   codec=donor.codec, manifest=donor.manifest, payload=other_payload)
              for w in range(windows + 1)]
    single = LocalEngine(spec, config=EngineConfig(micro_batch=rows // 2))
    one = [window(single, w, batches[w], others[w]) for w in range(windows + 1)][1:]
    group = RankGroup(2, spec, EngineConfig())
    try:
        two = [window(group.leader, w, batches[w], others[w]) for w in range(windows + 1)][1:]
        same = group.leader.digest() == single.digest()
    finally:
        group.close()
    return {"model": model, "steps": steps, "rows": rows, "seq_len": seq_len,
            "one_process_s": float(np.median(one)), "two_ranks_s": float(np.median(two)),
            "ratio": float(np.median(two) / np.median(one)), "same_theta": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "small"])
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(1)
    results = [bench(m, args.windows, args.steps, args.rows, args.seq_len) for m in args.models]
    print("model   one process   2 ranks   ratio   same θ")
    for r in results:
        print(f"{r['model']:6s} {r['one_process_s']:10.2f} s {r['two_ranks_s']:8.2f} s "
              f"{r['ratio']:6.2f}   {r['same_theta']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
