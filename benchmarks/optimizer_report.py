"""The optimizer study's report (benchmarks/optimizer_study.py --report): the results
table (markdown and CSV), the seed and pair tables, and the pictures: held-out loss
against tokens and against modelled wall-clock, final loss by seed, and final loss
against the bytes sent (the density of the top-k).

Reads the study's results (JSON lines) and nothing else; runs nothing.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.optimizer_grid

from benchmarks.optimizer_grid import DENSITY, PAIRS, RECOMMENDED, SMALL_H3, SMALL_SETTING
from node.dashboard.svgplot import xy_chart

BANDWIDTHS = {"100 Mbit/s": 100e6, "1 Gbit/s": 1e9}

def load_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


# each picture's runs; one led by a SparseLoCo run is about that run and waits for it
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
    "recommended": (RECOMMENDED, f"{RECOMMENDED} k=256", "SparseLoCo H=5 inner_reset outer lr 1.6",
                    "DiLoCo H=5 inner_reset", "DiLoCo H=5 lr 1 μ 0 inner_reset", "DDP base"),
    # small's inner lr (1e-3) at three top-k densities against the dense references
    "density_lr1e-3": (*(SMALL_SETTING + tag for tag in ("", " k=256", " k=512")),
                       "DiLoCo H=5 inner_reset", "DiLoCo H=5 lr 1 μ 0 inner_reset", "DDP base"),
    # small's setting at H = 3 against itself at H = 5, plain averaging (H = 3, 5), DDP at 5e-4
    "h3_lr1e-3": (SMALL_H3[0], SMALL_SETTING, "DiLoCo H=3 lr 1 μ 0 inner_reset",
                  "DiLoCo H=5 lr 1 μ 0 inner_reset", "DDP inner lr 5e-4"),
}
WALL_RUNS = ("DDP base", "DiLoCo base", "SparseLoCo base", "SparseLoCo H=10")


def _series(results: list[dict[str, Any]], names: tuple[str, ...], curve: Any
            ) -> dict[str, list[tuple[float, float]]]:
    return {n: curve(r) for n in names if (r := _find(results, n)) is not None}


def write_pictures(results: list[dict[str, Any]], folder: Path, model: str) -> list[Path]:
    paths = []
    for tag, names in PICTURES.items():
        series = _series(results, names, token_curve)
        if not any(name.startswith("SparseLoCo") for name in series) or (
                names[0].startswith("SparseLoCo") and names[0] not in series):
            continue  # references alone, or the SparseLoCo run it leads with is missing
        path = folder / f"loss_vs_tokens_{tag}.svg"
        path.write_text(xy_chart(series, chart_id=tag,
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


def _chart_key(results: list[dict[str, Any]], name: str) -> tuple[int, int | None]:
    """The seed picture a setting belongs to: its miner count and H (None for DDP, which
    has no H and joins every picture of its miner count as their reference)."""
    record = next(r for r in results if r["name"] == name or r["name"].startswith(f"{name} seed "))
    settings = record.get("settings", {})
    h = None if settings.get("optimizer") == "ddp" else int(settings.get("inner_steps", 5))
    return int(settings.get("miners", 4)), h


def _chart_name(miners: int, h: int) -> tuple[str, str]:
    """File name and title suffix: final_loss_by_seed.svg at M = 4 and H = 5, else
    final_loss_by_seed_M8.svg, _H3.svg, _M8_H3.svg and so on."""
    tags = [(f"M{miners}", f"M = {miners}")] if miners != 4 else []
    tags += [(f"H{h}", f"H = {h}")] if h != 5 else []
    return ("final_loss_by_seed" + "".join(f"_{t}" for t, _ in tags) + ".svg",
            "".join(f", {label}" for _, label in tags))


def seed_charts(results: list[dict[str, Any]], model: str) -> dict[str, str]:
    """Final loss by seed of the pair table's settings, one picture per miner count and H
    (so each stays within one palette of lines), DDP at that miner count in each."""
    groups = seed_groups(results)
    names = list(dict.fromkeys(n for pair in PAIRS for n in pair if n in groups))
    keys = {n: _chart_key(results, n) for n in names}
    hs = {m: list(dict.fromkeys(h for m2, h in keys.values() if m2 == m and h is not None))
          for m, _ in keys.values()}
    charts: dict[tuple[int, int], list[str]] = {}
    for name, (m, h) in keys.items():
        for chart_h in [h] if h is not None else hs[m] or [5]:
            charts.setdefault((m, chart_h), []).append(name)
    out = {}
    for (m, h), members in charts.items():
        file, suffix = _chart_name(m, h)
        out[file] = xy_chart(
            {n: [(float(k), v) for k, v in groups[n].items()] for n in members},
            chart_id="seeds", title=f"final held-out loss by seed ({model}{suffix})",
            x_label="seed", y_label="loss (nats/byte)", width=1180, height=380,
            legend_width=560)
    return out


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


def density_chart(results: list[dict[str, Any]], model: str) -> str | None:
    """The recommended setting's final loss (mean over its seeds) against its compression
    for each top-k density of DENSITY, with its dense references (Nesterov and
    plain-averaging DiLoCo, DDP, and DDP + 5%) as level lines; None before two densities
    have seeds."""
    groups = seed_groups(results)
    points = []
    for _, name in DENSITY:
        if name in groups and (first := _find(results, name)) is not None:
            points.append((float(first["compression_ratio"]),
                           statistics.fmean(groups[name].values())))
    if len(points) < 2:
        return None
    xs = [x for x, _ in points]
    series = {"SparseLoCo, the recommended setting at k = 64 / 128 / 256 / 512": sorted(points)}
    for label, name, factor in (
            ("DiLoCo, Nesterov μ 0.9 lr 0.7 (dense)", "DiLoCo H=5 inner_reset", 1.0),
            ("DiLoCo, plain averaging (dense)", "DiLoCo H=5 lr 1 μ 0 inner_reset", 1.0),
            ("DDP (dense)", "DDP base", 1.0), ("DDP + 5%", "DDP base", 1.05)):
        if name in groups:
            level = factor * statistics.fmean(groups[name].values())
            series[label] = [(min(xs), level), (max(xs), level)]
    return xy_chart(series, chart_id="density", integer_x=False,
                    title=f"final held-out loss (mean over seeds) vs compression ({model})",
                    x_label="compression (dense fp32 bytes / bytes sent)",
                    y_label="loss (nats/byte)", width=1180, height=380, legend_width=560)


def report(out: Path, folder: Path) -> Path:
    """Writes table.md, table.csv and the SVGs into `folder`; returns the table's path."""
    results = load_results(out)
    folder.mkdir(parents=True, exist_ok=True)
    model = results[0]["model"] if results else "?"
    table = folder / "table.md"
    table.write_text(markdown_table(results))
    write_csv(results, folder / "table.csv")
    if seed_groups(results):
        (folder / "seeds.md").write_text(seed_table(results) + "\n" + pair_table(results))
        for name, chart in seed_charts(results, model).items():
            (folder / name).write_text(chart)
    if (chart := density_chart(results, model)) is not None:
        (folder / "final_loss_vs_compression.svg").write_text(chart)
    write_pictures(results, folder, model)
    return table
