"""Convergence at equal tokens: DDP vs DiLoCo vs SparseLoCo (12-bit and gap-coded).

    python benchmarks/convergence.py --miners 4 --rounds 20 --inner-steps 30

Prints a markdown table (held-out loss, bytes per miner per round, compression
ratio, wall time) and writes a loss-curve SVG. Every run uses the same model
init, data assignment, token count and inner optimizer; only the outer
optimizer and what crosses the wire differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from node.dashboard.svgplot import line_chart
from node.sim.simulate import SimConfig, run_simulation

RUNS = (
    ("DDP (dense grads every step)", "ddp", "fixed12"),
    ("DiLoCo (dense, Nesterov 0.9, lr 0.7)", "diloco", "fixed12"),
    ("SparseLoCo, 12-bit indices", "sparseloco", "fixed12"),
    ("SparseLoCo, gap-coded indices", "sparseloco", "gap"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--miners", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--inner-steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--inner-lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--svg", type=Path, default=Path("docs/convergence.svg"))
    parser.add_argument("--json", type=Path, default=None, help="also write raw results")
    args = parser.parse_args()

    results = {}
    for label, optimizer, coding in RUNS:
        cfg = SimConfig.build(miners=args.miners, rounds=args.rounds, model=args.model,
                              optimizer=optimizer, index_coding=coding,
                              inner_steps=args.inner_steps, batch_size=args.batch_size,
                              seq_len=args.seq_len, inner_lr=args.inner_lr, seed=args.seed)
        print(f"running {label} ...", file=sys.stderr, flush=True)
        results[label] = run_simulation(cfg).to_json()

    diloco = results[RUNS[1][0]]["heldout_loss"][-1]
    ddp = results[RUNS[0][0]]["heldout_loss"][-1]
    tokens = args.miners * args.rounds * args.inner_steps * args.batch_size * args.seq_len
    print(f"\n{args.miners} miners, {args.rounds} rounds × H={args.inner_steps}, "
          f"batch {args.batch_size}×{args.seq_len}, model {args.model}, "
          f"{tokens:,} training tokens per run\n")
    print("| run | final held-out loss | vs DiLoCo | vs DDP | bytes/miner/round "
          "| compression vs dense fp32 | wall s | θ identical |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        final = r["heldout_loss"][-1]
        print(f"| {label} | {final:.4f} | {100 * (final / diloco - 1):+.2f}% "
              f"| {100 * (final / ddp - 1):+.2f}% | {r['wire_bytes_per_miner_round']:,.0f} "
              f"| {r['compression_ratio']:.3g}× | {r['seconds']:.1f} | {r['params_identical']} |")
    args.svg.parent.mkdir(parents=True, exist_ok=True)
    args.svg.write_text(line_chart({k: v["heldout_loss"] for k, v in results.items()},
                                   title=f"held-out loss, {args.miners} miners, {args.model}",
                                   x_label="round", y_label="loss (nats/byte)"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
