"""The loss cost of hiding communication behind compute: a one-window-delayed outer step.

Overlapped, a miner trains window w+1 while window w's contributions are gathered, so
window w's aggregate is applied one window late (`SimConfig(overlap=True)`; the daemons
do not run it yet). Each setting runs at the optimizer study's token budget
(benchmarks/optimizer_study.py, `tiny`, 4 miners) synchronous and overlapped; with
`--reuse`, the synchronous figure is taken from the study's results file when that
file holds the same run (the simulator is deterministic), instead of running it again.

    python benchmarks/overlap_cost.py --reuse
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimizer_study import BASE, DEFAULT_OUT, SEQ_LEN, Run, load_results, sim_config

from node.sim.simulate import run_simulation

SETTINGS = {"SparseLoCo base": {}, "SparseLoCo H=10": {"inner_steps": 10}}


def final_loss(run: Run, overlap: bool, threads: int) -> float:
    cfg = dataclasses.replace(sim_config(run, threads), overlap=overlap)
    return float(run_simulation(cfg).to_json()["heldout_loss"][-1])  # type: ignore[index]


def measure(name: str, tokens: int, reuse: bool, threads: int) -> dict[str, Any]:
    run = Run(name, "overlap", {**BASE, **SETTINGS[name]}, "tiny", tokens)
    known = {r["key"]: r for r in load_results(DEFAULT_OUT)} if reuse else {}
    started = time.perf_counter()
    if run.key in known:
        sync, source = float(known[run.key]["heldout_loss"][-1]), "study results"
    else:
        sync, source = final_loss(run, False, threads), "this run"
    late = final_loss(run, True, threads)
    return {"setting": name, "rounds": run.rounds, "sync_loss": round(sync, 4),
            "sync_from": source, "overlapped_loss": round(late, 4),
            "cost": round(late / sync - 1, 4), "seconds": round(time.perf_counter() - started)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1200 * 8 * SEQ_LEN)
    p.add_argument("--only", action="append", choices=list(SETTINGS))
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    rows = [measure(n, args.tokens, args.reuse, args.threads) for n in args.only or SETTINGS]
    print("| setting | rounds | synchronous | overlapped | cost |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['rounds']} | {r['sync_loss']} | {r['overlapped_loss']} "
              f"| {100 * r['cost']:+.1f}% |")
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
