"""Optimizer study: SparseLoCo vs DiLoCo vs DDP at equal tokens, with one-factor sweeps.

    python benchmarks/optimizer_study.py --grid quick            # run (resumable)
    python benchmarks/optimizer_study.py --report                # table + SVGs from results
    python benchmarks/optimizer_study.py --grid full --only "DDP base" --model small ...

This module owns the study's grid (a base setting and one-factor sweeps around it),
the resumable runner (one JSON line per finished run in --out, runs whose key is
already there are skipped); the report (markdown + CSV tables, SVG pictures) is
benchmarks/optimizer_report.py. Every run trains on the embedded
corpus with the simulator (`node.sim.simulate`) and the same token budget; the
number of rounds follows from it: rounds = tokens / (miners × H × batch × seq_len).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.optimizer_grid

from benchmarks.optimizer_grid import BASE, GRIDS
from benchmarks.optimizer_report import load_results, report
from node.engine.config import EngineConfig
from node.engine.inner import InnerConfig, ResetScope
from node.outer.ablations import sparsity_variant
from node.outer.optimizers import OuterConfig
from node.runtime.runspec import RunSpec
from node.sim.simulate import SIM_SPEC, RoundRecord, SimConfig, run_simulation

DEFAULT_OUT = Path("benchmarks/results/optimizer_study.jsonl")
DEFAULT_DOCS = Path("docs/optimizer")
SEQ_LEN = 128


@dataclass(frozen=True)
class StudySpec(RunSpec):
    """A run spec that can also set SparseLoCo's error-feedback β and DiLoCo's momentum
    (study-only knobs: the network's run spec keeps OuterConfig's defaults for both)."""

    error_decay: float | None = None
    outer_momentum: float | None = None
    inner_eps: float | None = None
    reset_scope: ResetScope | None = None

    def inner_config(self) -> InnerConfig:
        base = super().inner_config()
        eps = base.eps if self.inner_eps is None else self.inner_eps
        scope = base.reset_scope if self.reset_scope is None else self.reset_scope
        return replace(base, eps=eps, reset_scope=scope)

    def outer_config(self) -> OuterConfig:
        base = super().outer_config()
        beta = base.error_decay if self.error_decay is None else self.error_decay
        mu = base.momentum if self.outer_momentum is None else self.outer_momentum
        return replace(base, error_decay=beta, momentum=mu)


@dataclass(frozen=True)
class Run:
    name: str
    group: str
    settings: dict[str, Any]
    model: str
    tokens: int
    fixed_rounds: int | None = None  # set: this many rounds, whatever the token count
    device: str = "cpu"  # where the miners compute (cuda: not bit-identical to a CPU run)

    @property
    def rounds(self) -> int:
        if self.fixed_rounds is not None:
            return self.fixed_rounds
        s = self.settings
        per_round = int(s["miners"] * s["inner_steps"] * s["batch_size"] * SEQ_LEN)
        return max(1, self.tokens // per_round)

    @property
    def key(self) -> str:
        """What makes two runs the same run (the name is only a label)."""
        body = {**self.settings, "model": self.model, "tokens": self.tokens, "seq_len": SEQ_LEN,
                "rounds": self.fixed_rounds}
        if self.device != "cpu":
            body["device"] = self.device
        return json.dumps(body, sort_keys=True, separators=(",", ":"))


def grid_runs(grid: str, model: str, tokens: int, rounds: int | None = None,
              device: str = "cpu", **fixed: int | None) -> list[Run]:
    """The grid's runs; `fixed` (miners=, inner_steps=) overrides every run (smoke tests)."""
    force = {k: v for k, v in fixed.items() if v is not None}
    runs = []
    for name, group, over in GRIDS[grid]:
        settings = {**BASE, **over, **force}
        share = settings.pop("token_share", 1)
        runs.append(Run(name, group, settings, model, int(tokens * share), rounds, device))
    return runs


def sim_config(run: Run, threads: int) -> SimConfig:
    s = dict(run.settings)
    miners = s.pop("miners")
    variant = s.pop("sparsity", None)
    outer = partial(sparsity_variant, variant) if variant else None
    spec = StudySpec(**{**vars_of(SIM_SPEC), **s, "model": run.model, "seq_len": SEQ_LEN})
    return SimConfig(spec, miners=miners, rounds=run.rounds, threads=threads, outer=outer,
                     engine=EngineConfig(device=run.device))


def vars_of(spec: RunSpec) -> dict[str, Any]:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__}


def execute(run: Run, threads: int) -> dict[str, Any]:
    """One simulated run; its record as written to the results file."""
    records: list[RoundRecord] = []
    started = time.perf_counter()

    def progress(record: RoundRecord) -> None:  # a killed run still leaves its curve
        records.append(record)
        print(f"  round {len(records)}/{run.rounds}: held-out {record.heldout_loss:.4f} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    result = run_simulation(sim_config(run, threads), on_round=progress).to_json()
    miners = run.settings["miners"]
    return {
        "name": run.name, "group": run.group, "key": run.key, "settings": run.settings,
        "model": run.model, "device": run.device, "rounds": run.rounds,
        "params": result["params"],
        "tokens": run.rounds * miners * run.settings["inner_steps"]
        * run.settings["batch_size"] * SEQ_LEN,
        "heldout_loss": result["heldout_loss"],
        "round_seconds": [r.seconds for r in records],
        "round_bytes_per_miner": [r.wire_bytes_per_miner for r in records],
        "wire_bytes_per_miner_round": result["wire_bytes_per_miner_round"],
        "compression_ratio": result["compression_ratio"],
        "params_identical": result["params_identical"],
        "wall_s": time.perf_counter() - started,
    }


def pending(runs: list[Run], done: list[dict[str, Any]]) -> Iterator[Run]:
    keys = {r["key"] for r in done}
    return (run for run in runs if run.key not in keys)


def run_grid(runs: list[Run], out: Path, threads: int) -> int:
    """Runs what `out` lacks, appending each finished run at once; returns how many ran."""
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    for run in pending(runs, load_results(out)):
        print(f"{time.strftime('%H:%M:%S')} {run.name}: {run.rounds} rounds ...",
              file=sys.stderr, flush=True)
        record = execute(run, threads)
        with out.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"  final held-out {record['heldout_loss'][-1]:.4f} in {record['wall_s']:.0f} s",
              file=sys.stderr, flush=True)
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="quick")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results (JSON lines)")
    parser.add_argument("--model", default="tiny", help="tiny or small")
    parser.add_argument("--tokens", type=int, default=1200 * 8 * SEQ_LEN,
                        help="training tokens per run (all miners together)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="fixed rounds per run instead of the token budget")
    parser.add_argument("--miners", type=int, default=None, help="override (smoke tests)")
    parser.add_argument("--inner-steps", type=int, default=None, help="override (smoke tests)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the miners' engines)")
    parser.add_argument("--only", action="append", default=None, metavar="NAME",
                        help="run only the grid's runs of this name (repeatable)")
    parser.add_argument("--report", action="store_true", help="only write table and SVGs")
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="report folder")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out, args.docs).read_text())
        return 0
    runs = grid_runs(args.grid, args.model, args.tokens, args.rounds, args.device,
                     miners=args.miners, inner_steps=args.inner_steps)
    if args.only:
        runs = [run for run in runs if run.name in args.only]
    ran = run_grid(runs, args.out, args.threads)
    print(f"{ran} runs finished into {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
