"""The proof of assigned data by replay: how far apart honest and wrong-data miners are,
and what resetting the inner optimizer each window costs the model.

Part 1 runs the validator harness (tests/support/attackers.py: the real validator,
MemoryChain, the daemons' outer step) with honest miners — the last one training
under bf16 autocast while the validator replays in fp32 — and one miner that trains
honestly on another uid's batches ("wrongdata"). It prints every miner's replay
evidence per window (the `e=` of the validator's result rows) and the margins.

Part 2 (`--compare-keep`) trains honest-only networks for the same windows, inner
AdamW state reset each window (what the replay needs), kept, and (with
`--reset-scope first_moment`) reset but for the second moment, and prints the held-out
losses and their ratios.

`--reset-scope first_moment` makes every miner of part 1 forget only AdamW's first
moment each window and carry the second, while the validator still replays from fresh
state: does the proof survive a miner that keeps its second moment?

`--public-second-moment DECAY` runs the network's public second moment: miners and
validator fold each window's public batch; `--late W` then gives the first honest
miner a fresh trainer at window W (a miner that joins at W, its public moment
empty), and `--late-validator W` starts the validator anew at W (its scores on
disk, its public moment empty), to see what the missed history costs the proofs.
(A miner or validator daemon that restarts keeps its estimate: docs/daemons.md.)

    .venv/bin/python benchmarks/proof_of_data.py --windows 14 --compare-keep
    .venv/bin/python benchmarks/proof_of_data.py --windows 14 --compare-keep \
        --reset-scope first_moment
    .venv/bin/python benchmarks/proof_of_data.py --windows 14 --compare-keep \
        --public-second-moment 0.9 --late 8
    .venv/bin/python benchmarks/proof_of_data.py --windows 14 \
        --public-second-moment 0.9 --late-validator 8
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the harness

from node.engine.config import EngineConfig
from node.engine.inner import InnerTrainer, ResetScope
from tests.support.attackers import HONEST, Harness, HarnessConfig

EVIDENCE = re.compile(r"b=([+-][01]) e=([+-][0-9.]+)")


def evidence_run(windows: int, honest: int, inner_steps: int, scope: ResetScope = "all",
                 public: float | None = None, late: int | None = None,
                 late_validator: int | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(HarnessConfig(inner_steps=inner_steps, reset_scope=scope,
                                  public_second_moment=public),
                    [HONEST] * honest + ["wrongdata"], Path(tmp) / "v.db")
        bf16 = h.miners[honest - 1]
        assert bf16.model is not None
        bf16.trainer = InnerTrainer(bf16.model, h.miner_inner_config(),
                                    EngineConfig(precision="bf16"))
        names = {m.uid: m.name + (" (bf16)" if m is bf16 else "") for m in h.miners}
        per_miner: dict[str, list[float]] = {n: [] for n in names.values()}
        bits: dict[str, list[int]] = {n: [] for n in names.values()}
        for w in range(windows):
            if w == late:
                rejoin_miner(h)
            if w == late_validator:
                h.validator.state.close()
                h.validator = h.make_validator()
            for row in h.run_window(w).rows:
                found = EVIDENCE.search(row.reason)
                if found:
                    bits[names[row.uid]].append(int(found.group(1)))
                    per_miner[names[row.uid]].append(float(found.group(2)))
            print(f"window {w}: " + "  ".join(
                f"{n} {v[-1]:+.2f}" + ("" if bits[n][-1] else " (b 0)")
                for n, v in per_miner.items() if v), flush=True)
    honest_e = [e for n, v in per_miner.items() if n.startswith(HONEST) for e in v]
    wrong_e = [e for n, v in per_miner.items() if n.startswith("wrongdata") for e in v]
    return {"windows": windows, "inner_steps": inner_steps, "reset_scope": scope,
            "public_second_moment": public, "late": late, "late_validator": late_validator,
            "honest_min": round(min(honest_e), 3), "honest_max": round(max(honest_e), 3),
            "wrongdata_min": round(min(wrong_e), 3), "wrongdata_max": round(max(wrong_e), 3),
            "threshold": h.scoring_config().replay_threshold,
            "honest_bits": bit_counts(bits, HONEST),
            "wrongdata_bits": bit_counts(bits, "wrongdata")}


def bit_counts(bits: dict[str, list[int]], prefix: str) -> dict[int, int]:
    """How many +1, 0 and −1 bits the miners whose name starts with `prefix` got."""
    got = [x for n, v in bits.items() if n.startswith(prefix) for x in v]
    return {b: got.count(b) for b in (1, 0, -1)}


def rejoin_miner(h: Harness) -> None:
    """The first honest miner restarted: a fresh trainer, its public moment empty."""
    first = h.miners[0]
    assert first.model is not None
    first.trainer = InnerTrainer(first.model, h.miner_inner_config())


def heldout_after(windows: int, inner_steps: int, reset: bool,
                  scope: ResetScope = "all", public: float | None = None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(HarnessConfig(inner_steps=inner_steps, inner_reset=reset,
                                  proof_of_data=reset, reset_scope=scope,
                                  public_second_moment=public),
                    [HONEST] * 4, Path(tmp) / "v.db")
        for w in range(windows):
            h.run_window(w, post=False)
        return h.heldout()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=14)
    ap.add_argument("--honest", type=int, default=4)
    ap.add_argument("--inner-steps", type=int, default=6)
    ap.add_argument("--compare-keep", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reset-scope", choices=("all", "first_moment"), default="all",
                    help="what the miners' reset forgets (the validator replays fresh)")
    ap.add_argument("--public-second-moment", type=float, default=None, metavar="DECAY")
    ap.add_argument("--late", type=int, default=None, metavar="W",
                    help="the first honest miner starts anew (an empty public moment) at W")
    ap.add_argument("--late-validator", type=int, default=None, metavar="W",
                    help="the validator starts anew (an empty public moment) at W")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = evidence_run(args.windows, args.honest, args.inner_steps, args.reset_scope,
                       args.public_second_moment, args.late, args.late_validator)
    print(json.dumps(out), flush=True)
    if args.compare_keep:
        reset = heldout_after(args.windows, args.inner_steps, True)
        kept = heldout_after(args.windows, args.inner_steps, False)
        row = {"windows": args.windows, "inner_steps": args.inner_steps,
               "heldout_reset": round(reset, 4), "heldout_kept": round(kept, 4),
               "reset_vs_kept": round(reset / kept, 4)}
        if args.reset_scope != "all":
            partial = heldout_after(args.windows, args.inner_steps, True, args.reset_scope)
            row |= {f"heldout_{args.reset_scope}": round(partial, 4),
                    f"{args.reset_scope}_vs_kept": round(partial / kept, 4)}
        if args.public_second_moment is not None:
            public = heldout_after(args.windows, args.inner_steps, True,
                                   public=args.public_second_moment)
            row |= {"heldout_public": round(public, 4), "public_vs_kept": round(public / kept, 4)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
