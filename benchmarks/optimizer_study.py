"""Optimizer study: SparseLoCo vs DiLoCo vs DDP at equal tokens, with one-factor sweeps.

    python benchmarks/optimizer_study.py --grid quick            # run (resumable)
    python benchmarks/optimizer_study.py --report                # table + SVGs from results
    python benchmarks/optimizer_study.py --grid full --only "DDP base" --model small ...

This module owns the study's grid (a base setting and one-factor sweeps around it),
the resumable runner (one JSON line per finished run in --out, runs whose key is
already there are skipped) and the report (markdown + CSV table, SVG loss curves
against tokens and against modelled wall-clock). Every run trains on the embedded
corpus with the simulator (`node.sim.simulate`) and the same token budget; the
number of rounds follows from it: rounds = tokens / (miners × H × batch × seq_len).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.optimizer_grid

from benchmarks.optimizer_grid import BASE, GRIDS, PAIRS, RECOMMENDED
from node.dashboard.svgplot import xy_chart
from node.engine.config import EngineConfig
from node.engine.inner import InnerConfig, ResetScope
from node.outer.ablations import sparsity_variant
from node.outer.optimizers import OuterConfig
from node.runtime.runspec import RunSpec
from node.sim.simulate import SIM_SPEC, RoundRecord, SimConfig, run_simulation

DEFAULT_OUT = Path("benchmarks/results/optimizer_study.jsonl")
DEFAULT_DOCS = Path("docs/optimizer")
SEQ_LEN = 128
BANDWIDTHS = {"100 Mbit/s": 100e6, "1 Gbit/s": 1e9}


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


def load_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def _final(record: dict[str, Any]) -> float:
    return float(record["heldout_loss"][-1])


def _find(results: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in results if r["name"] == name), None)


def _versus(value: float, ref: dict[str, Any] | None) -> str:
    return f"{100 * (value / _final(ref) - 1):+.1f}%" if ref else "–"


TABLE_HEAD = ("run", "group", "M", "H", "rounds", "final held-out loss", "vs DDP", "vs DiLoCo",
              "bytes/miner/round", "compression", "wall s")


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    ddp, diloco = _find(results, "DDP base"), _find(results, "DiLoCo base")
    rows = []
    for r in results:
        s, loss = r["settings"], _final(r)
        rows.append([r["name"], r["group"], str(s["miners"]), str(s["inner_steps"]),
                     str(r["rounds"]), f"{loss:.4f}", _versus(loss, ddp),
                     _versus(loss, diloco), f"{r['wire_bytes_per_miner_round']:,.0f}",
                     f"{r['compression_ratio']:.3g}×", f"{r['wall_s']:.0f}"])
    return rows


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines) + "\n"


def write_csv(results: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(TABLE_HEAD)
        writer.writerows(table_rows(results))


def token_curve(record: dict[str, Any]) -> list[tuple[float, float]]:
    per_round = record["tokens"] / record["rounds"]
    return [(i * per_round, loss) for i, loss in enumerate(record["heldout_loss"])]


def wallclock_curve(record: dict[str, Any], bits_per_s: float) -> list[tuple[float, float]]:
    """Modelled seconds: each miner's share of the measured compute (miners run in parallel
    on their own machines) plus its bytes per round over the link, round by round."""
    miners = record["settings"]["miners"]
    t, points = 0.0, [(0.0, record["heldout_loss"][0])]
    for secs, sent, loss in zip(record["round_seconds"], record["round_bytes_per_miner"],
                                record["heldout_loss"][1:], strict=True):
        t += secs / miners + 8 * sent / bits_per_s
        points.append((t, loss))
    return points


PICTURES = {
    "gap": ("DDP base", "DiLoCo base", "SparseLoCo base", "AdamW batch 32 (M=1)",
            "AdamW batch 8 (M=1)", "DiLoCo lr 1 μ 0"),
    "sweeps": ("SparseLoCo base", "SparseLoCo inner_reset", "SparseLoCo H=10",
               "SparseLoCo H=10 inner_reset", "SparseLoCo H=100", "SparseLoCo M=8",
               "SparseLoCo inner lr 2e-3"),
    "sparsity": ("SparseLoCo base", "SparseLoCo unquantised", "SparseLoCo random-k",
                 "SparseLoCo k=16", "SparseLoCo unquantised k=16", "DiLoCo base"),
    "short_h": ("DDP base", "DiLoCo H=10", "DiLoCo H=10 μ 0", "SparseLoCo H=10",
                "SparseLoCo H=10 outer lr 1.3", "SparseLoCo H=5", "SparseLoCo H=5 inner_reset"),
    "reset": ("SparseLoCo H=5", "SparseLoCo H=5 inner_reset outer lr 1.6",
              "SparseLoCo H=5 inner_reset outer lr 1.6, second moment kept",
              "SparseLoCo H=5 inner_reset outer lr 1.6, public second moment 0.9",
              "SparseLoCo H=5 inner_reset outer lr 2.5, public second moment 0.9",
              "SparseLoCo H=5 inner_reset outer lr 1.6 ε 1e-05", "DiLoCo H=5 inner_reset",
              "DiLoCo H=5 lr 1 μ 0 inner_reset"),
    "recommended": (RECOMMENDED, "SparseLoCo H=5 inner_reset outer lr 1.6",
                    "DiLoCo H=5 inner_reset", "DiLoCo H=5 lr 1 μ 0 inner_reset", "DDP base"),
}
WALL_RUNS = ("DDP base", "DiLoCo base", "SparseLoCo base", "SparseLoCo H=10")


def _series(results: list[dict[str, Any]], names: tuple[str, ...], curve: Any
            ) -> dict[str, list[tuple[float, float]]]:
    return {n: curve(r) for n in names if (r := _find(results, n)) is not None}


def write_pictures(results: list[dict[str, Any]], folder: Path, model: str) -> list[Path]:
    paths = []
    for tag, names in PICTURES.items():
        path = folder / f"loss_vs_tokens_{tag}.svg"
        path.write_text(xy_chart(_series(results, names, token_curve), chart_id=tag,
                                 title=f"held-out loss vs tokens ({model})",
                                 x_label="training tokens", y_label="loss (nats/byte)",
                                 width=1180, height=380, legend_width=560))
        paths.append(path)
    for label, bps in BANDWIDTHS.items():
        path = folder / f"loss_vs_wallclock_{label.split()[0].lower()}.svg"
        series = _series(results, WALL_RUNS, lambda r, b=bps: wallclock_curve(r, b))
        path.write_text(xy_chart(series, chart_id=f"wall-{label}", integer_x=False,
                                 title=f"held-out loss vs modelled wall-clock, {label}",
                                 x_label="seconds", y_label="loss (nats/byte)",
                                 width=1180, height=380, legend_width=560))
        paths.append(path)
    return paths


def seed_groups(results: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Final losses by seed per setting that was repeated over seeds: the run named `X`
    (seed 0) and the runs named `X seed N`, in seed order."""
    seeded: dict[str, dict[int, float]] = {}
    for r in results:
        if r["group"] == "seeds":
            base, seed = r["name"].rsplit(" seed ", 1)
            if base not in seeded and (first := _find(results, base)) is not None:
                seeded[base] = {0: _final(first)}
            seeded.setdefault(base, {})[int(seed)] = _final(r)
    return {base: dict(sorted(by_seed.items())) for base, by_seed in seeded.items()}


def seed_table(results: list[dict[str, Any]]) -> str:
    """Mean, spread and every seed's final loss per repeated setting; the seeds pair up
    (the same seed gives every method the same init, batches and held-out sample)."""
    groups = seed_groups(results)
    lines = ["| setting | seeds | mean | min – max | per seed | vs DDP base, per seed |"
             " vs DiLoCo base, per seed |", "|---|---|---|---|---|---|---|"]
    for name, by_seed in groups.items():
        losses = list(by_seed.values())
        per = " / ".join(f"{x:.4f}" for x in losses)
        lines.append(f"| {name} | {len(losses)} | {sum(losses) / len(losses):.4f} | "
                     f"{min(losses):.4f} – {max(losses):.4f} | {per} | "
                     f"{_paired(by_seed, groups.get('DDP base'))} | "
                     f"{_paired(by_seed, groups.get('DiLoCo base'))} |")
    return "\n".join(lines) + "\n"


def _paired(by_seed: dict[int, float], ref: dict[int, float] | None) -> str:
    """Each seed's loss against the reference's at the same seed (– where it has none)."""
    if ref is None:
        return "–"
    return " / ".join(f"{100 * (x / ref[s] - 1):+.1f}%" if s in ref else "–"
                      for s, x in by_seed.items())


T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)  # 95% t, df 1-10


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[int, float, float, int]:
    """Over the seeds both have: how many, the mean of a/b − 1, the half-width of its 95%
    confidence interval (t; nan under two seeds) and on how many seeds a ≤ b."""
    diffs = [a[s] / b[s] - 1 for s in sorted(set(a) & set(b))]
    n, below = len(diffs), sum(d <= 0 for d in diffs)
    mean = statistics.fmean(diffs) if n else math.nan
    ok = 2 <= n <= len(T95) + 1
    half = T95[n - 2] * statistics.stdev(diffs) / math.sqrt(n) if ok else math.nan
    return n, mean, half, below


def pair_table(results: list[dict[str, Any]]) -> str:
    """Each pair of PAIRS over the seeds both ran: the mean per-seed difference with its
    95% confidence interval, and the seeds where the first is at or below the second."""
    groups = seed_groups(results)
    lines = ["| setting | against | seeds | mean difference | 95% interval | at or below |",
             "|---|---|---|---|---|---|"]
    for a, b in PAIRS:
        if a in groups and b in groups:
            n, mean, half, below = paired_difference(groups[a], groups[b])
            lines.append(f"| {a} | {b} | {n} | {100 * mean:+.2f}% | "
                         f"{100 * (mean - half):+.2f}% to {100 * (mean + half):+.2f}% | "
                         f"{below} of {n} |")
    return "\n".join(lines) + "\n"


def report(out: Path, folder: Path) -> Path:
    """Writes table.md, table.csv and the SVGs into `folder`; returns the table's path."""
    results = load_results(out)
    folder.mkdir(parents=True, exist_ok=True)
    model = results[0]["model"] if results else "?"
    table = folder / "table.md"
    table.write_text(markdown_table(results))
    write_csv(results, folder / "table.csv")
    if groups := seed_groups(results):
        (folder / "seeds.md").write_text(seed_table(results) + "\n" + pair_table(results))
        names = dict.fromkeys(n for pair in PAIRS for n in pair if n in groups)
        (folder / "final_loss_by_seed.svg").write_text(xy_chart(
            {n: [(float(k), v) for k, v in groups[n].items()] for n in names},
            chart_id="seeds", title=f"final held-out loss by seed ({model})", x_label="seed",
            y_label="loss (nats/byte)", width=1180, height=380, legend_width=560))
    write_pictures(results, folder, model)
    return table


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
