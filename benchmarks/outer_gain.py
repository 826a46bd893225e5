"""How far SparseLoCo's outer step goes along plain averaging's: its gain per exchange.

Per exchange, miner 0's probe compares the sparse step s (the mean of the decoded
contributions, before the outer lr) with d, the clip-to-median mean of the miners'
dense pseudo-gradients (what DiLoCo at outer lr 1 without momentum applies):

* gain = s·d / d·d: how far s goes along d (1: as far as plain averaging);
* norm ratio ||s|| / ||d|| and cosine(s, d);
* miners per sent position: over the positions that at least one miner sent, how many
  miners sent each (a position only one of M miners sent enters the mean at 1/M of its
  value; error feedback keeps the rest only in that miner's buffer).

An outer lr of 1/gain moves θ along d as far as plain averaging does. The probe only
observes: a probed run's held-out curve is the unprobed run's, bit for bit (the table
says whether it equals the optimizer study's record of the same run).

    python benchmarks/outer_gain.py --only "SparseLoCo base" --only "NAME" ... \
        --svg docs/optimizer/outer_gain.svg

NAME is a SparseLoCo row of the study's full grid (benchmarks/optimizer_grid.py);
results: one JSON line per run in --out (finished runs are skipped).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimizer_study import DEFAULT_OUT, SEQ_LEN, Run, grid_runs, load_results, sim_config

from node.dashboard.svgplot import xy_chart
from node.outer.ablations import clipped_mean
from node.outer.aggregate import AggregateStats, SparseMean
from node.outer.optimizers import Contribution, InnerStep, OuterConfig, Place, SparseLoCo, to_param
from node.sim.simulate import run_simulation
from protocol.spec import Manifest

OUT = Path("benchmarks/results/outer_gain.jsonl")


def step_stats(deltas: Sequence[Sequence[torch.Tensor]], sent: Sequence[Sequence[torch.Tensor]],
               step: Sequence[torch.Tensor]) -> dict[str, float]:
    """One exchange's figures from each miner's dense pseudo-gradient (`deltas`), what
    each sent (`sent`, zero where it sent nothing) and the sparse mean (`step`)."""
    dot = dd = ss = 0.0
    sent_once = positions = 0
    for t, s in enumerate(step):
        d = clipped_mean([miner[t] for miner in deltas])[0].double()
        s64 = s.double()
        dot += float((s64 * d).sum())
        dd += float(d.pow(2).sum())
        ss += float(s64.pow(2).sum())
        count = sum((miner[t] != 0).to(torch.int64) for miner in sent)
        assert isinstance(count, torch.Tensor)
        sent_once += int((count > 0).sum())
        positions += int(count.sum())
    return {"gain": dot / dd, "norm_ratio": (ss / dd) ** 0.5, "cosine": dot / (ss * dd) ** 0.5,
            "miners_per_position": positions / max(sent_once, 1)}


class Recorder:
    """Collects the miners' pseudo-gradients and sent tensors of the exchange under way."""

    def __init__(self) -> None:
        self.deltas: dict[int, list[torch.Tensor]] = {}
        self.sent: dict[int, list[torch.Tensor]] = {}
        self.rows: list[dict[str, float]] = []

    def exchange(self, step: list[torch.Tensor]) -> None:
        order = sorted(self.deltas)
        self.rows.append(step_stats([self.deltas[m] for m in order],
                                    [self.sent[m] for m in order], step))
        self.deltas.clear()
        self.sent.clear()


class Probed(SparseLoCo):
    """SparseLoCo that tells a `Recorder` what it was given, what it sent and (miner 0
    only) the sparse mean it applied; the outer step itself is SparseLoCo's."""

    def __init__(self, config: OuterConfig, manifest: Manifest, recorder: Recorder,
                 miner: int) -> None:
        super().__init__(config, manifest)
        self.recorder, self.miner = recorder, miner

    def encode(self, local: Sequence[torch.Tensor]) -> bytes:
        deltas = [d.detach().to("cpu", torch.float32, copy=True) for d in local]
        before = [e.detach().to("cpu", copy=True) for e in self.error]
        payload = super().encode(local)
        beta = self.config.error_decay  # sent = what entered the buffer minus what stayed
        self.recorder.deltas[self.miner] = deltas
        self.recorder.sent[self.miner] = [b.mul_(beta).add_(d).sub_(e.cpu())
                                          for b, d, e in zip(before, deltas, self.error,
                                                             strict=True)]
        return payload

    def apply(self, params: Sequence[torch.Tensor],
              contributions: Sequence[tuple[bytes, Contribution]],
              inner_step: InnerStep, place: Place = to_param) -> AggregateStats:
        if self.miner == 0:
            self.recorder.exchange(list(SparseMean(contributions, self.manifest, self.codec,
                                                   "cpu")))
        return super().apply(params, contributions, inner_step, place)


def probe(run: Run, threads: int) -> dict[str, Any]:
    """Runs `run` with every miner's outer optimizer probed; its JSON record."""
    if run.settings["optimizer"] != "sparseloco" or "sparsity" in run.settings:
        raise SystemExit(f"{run.name!r}: only plain SparseLoCo rows can be probed")
    recorder = Recorder()
    cfg = dataclasses.replace(
        sim_config(run, threads),
        outer=lambda config, manifest, miner: Probed(config, manifest, recorder, miner))
    started = time.perf_counter()
    losses = run_simulation(cfg).to_json()["heldout_loss"]
    assert isinstance(losses, list)
    return {"name": run.name, "key": run.key, "outer_lr": run.settings["outer_lr"],
            "k": run.settings["k"], "heldout_loss": losses, "exchanges": recorder.rows,
            "wall_s": time.perf_counter() - started}


def mean_of(rows: Sequence[dict[str, float]], field: str) -> float:
    return sum(r[field] for r in rows) / len(rows)


def table(records: Sequence[dict[str, Any]], study: dict[str, dict[str, Any]]) -> str:
    lines = ["| run | k | outer lr | exchanges | gain (all / last half) | 1/gain | norm ratio "
             "| cosine | miners per sent position | final loss | = study's run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        rows, late = r["exchanges"], r["exchanges"][len(r["exchanges"]) // 2:]
        known = study.get(r["key"])
        same = "–" if known is None else (
            "yes" if known["heldout_loss"] == r["heldout_loss"] else "NO")
        lines.append(
            f"| {r['name']} | {r['k']} | {r['outer_lr']:g} | {len(rows)} "
            f"| {mean_of(rows, 'gain'):.3f} / {mean_of(late, 'gain'):.3f} "
            f"| {1 / mean_of(late, 'gain'):.2f} | {mean_of(late, 'norm_ratio'):.3f} "
            f"| {mean_of(late, 'cosine'):.3f} | {mean_of(late, 'miners_per_position'):.2f} "
            f"| {r['heldout_loss'][-1]:.4f} | {same} |")
    return "\n".join(lines)


def label(record: dict[str, Any]) -> str:
    key = json.loads(record["key"])
    miners = "" if key["miners"] == 4 else f", M={key['miners']}"
    return f"k={record['k']}, lr {record['outer_lr']:g}, H={key['inner_steps']}{miners}"


def picture(records: Sequence[dict[str, Any]]) -> str:
    """Gain per exchange against inner steps done (H differs between runs)."""
    series = {}
    for r in sorted(records, key=lambda r: (r["k"], r["outer_lr"])):
        h = json.loads(r["key"])["inner_steps"]
        series[label(r)] = [((i + 1) * h, e["gain"]) for i, e in enumerate(r["exchanges"])]
    return xy_chart(series, title="SparseLoCo's step along plain averaging's (gain per exchange)",
                    x_label="inner steps", y_label="gain s·d / d·d", chart_id="outer-gain",
                    width=720, legend_width=190)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="a SparseLoCo row of the full grid (repeatable)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--tokens", type=int, default=1200 * 8 * SEQ_LEN)
    parser.add_argument("--rounds", type=int, default=None, help="fixed rounds (smoke tests)")
    parser.add_argument("--miners", type=int, default=None, help="override (smoke tests)")
    parser.add_argument("--inner-steps", type=int, default=None, help="override (smoke tests)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT, help="results (JSON lines)")
    parser.add_argument("--study", type=Path, default=DEFAULT_OUT,
                        help="the optimizer study's results, to compare the curves")
    parser.add_argument("--svg", type=Path, default=None, help="also draw the gains here")
    args = parser.parse_args(argv)
    runs = [run for run in grid_runs("full", args.model, args.tokens, args.rounds,
                                     miners=args.miners, inner_steps=args.inner_steps)
            if run.name in args.only]
    done = {r["key"] for r in load_results(args.out)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for run in (run for run in runs if run.key not in done):
        print(f"{time.strftime('%H:%M:%S')} {run.name}: {run.rounds} rounds ...",
              file=sys.stderr, flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(probe(run, args.threads)) + "\n")
    keys = {run.key for run in runs}
    records = [r for r in load_results(args.out) if r["key"] in keys or not args.only]
    print(table(records, {r["key"]: r for r in load_results(args.study)}))
    if args.svg is not None:
        args.svg.parent.mkdir(parents=True, exist_ok=True)
        args.svg.write_text(picture(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
