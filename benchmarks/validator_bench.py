"""Validator throughput: LossScore evaluations per minute on CPU.

One evaluation = what `Validator._evaluate` spends per miner: the own batches'
loss before, the update applied alone (own + random batches after), and the
leave-one-out reference update (aggregate of the other helpful miners, applied
and evaluated on own + random). Measured twice in the same run: "plain" (the
update as sent) and "median_norm" (rescaled to the window's median norms first,
what the validator does now); `cost_vs_plain` is their ratio. Random compressed
updates stand in for miners' (the cost does not depend on the values). Prints JSON.

    .venv/bin/python benchmarks/validator_bench.py --models tiny small --window-s 60 300
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from node.engine.data import stdlib_corpus
from node.engine.model import build_model, get_config, model_manifest
from node.outer.aggregate import aggregate_sparse, median_norms
from protocol.sparse import compress
from protocol.spec import CodecSpec
from validator import scoring


def bench(model_name: str, miners: int, batch_size: int, seq_len: int,
          steps: int) -> dict[str, object]:
    cfg = get_config(model_name)
    seq_len = min(seq_len, cfg.max_seq_len)
    tokens = stdlib_corpus(4 * 2**20).train
    model = build_model(cfg, seed=0)
    manifest = model_manifest(model)
    spec = CodecSpec()
    theta = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(0)
    updates = [[compress(torch.randn(s.shape, generator=gen) * 1e-3, spec) for s in manifest]
               for _ in range(miners)]
    scfg = scoring.ScoringConfig(data_seed=0, inner_steps=steps, batch_size=batch_size,
                                 seq_len=seq_len, own_steps=steps, rand_batches=steps)
    ev = scoring.Evaluator(build_model(cfg, seed=1), manifest, spec)
    rand = scoring.random_batches(tokens, scfg, 1, 0)
    ev.load(theta, None, 0.0)
    rand_before = ev.loss(rand)
    timing = {}
    for mode in ("plain", "median_norm"):  # before / after scoring at the median norms
        start = time.perf_counter()
        norms = median_norms(updates) if mode == "median_norm" else None
        for uid, upd in enumerate(updates):
            own = scoring.own_batches(tokens, scfg, 1, 0, uid)
            ev.load(theta, None, 0.0)
            before = ev.loss(own)
            scoring.loss_score(ev, theta, upd, own, before, rand, rand_before, scfg, norms)
            others = [(bytes([i]), u) for i, u in enumerate(updates) if i != uid]
            ref, _ = aggregate_sparse(others, manifest, spec)
            scoring.reference_score(ev, theta, ref, own, before, rand, rand_before, scfg)
        timing[mode] = (time.perf_counter() - start) / miners
    per_eval = timing["median_norm"]
    return {"model": model_name, "threads": torch.get_num_threads(), "batch_size": batch_size,
            "seq_len": seq_len, "own_batches": steps, "rand_batches": steps,
            "seconds_per_eval_plain": round(timing["plain"], 4),
            "seconds_per_eval": round(per_eval, 4), "evals_per_minute": round(60 / per_eval, 1),
            "cost_vs_plain": round(per_eval / timing["plain"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny", "small"])
    ap.add_argument("--miners", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--window-s", type=float, nargs="+", default=[60.0, 300.0])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = []
    for name in args.models:
        r = bench(name, args.miners, args.batch_size, args.seq_len, args.batches)
        # half the window goes to evaluation, the rest to gathering, rating and posting
        per_eval = float(r["seconds_per_eval"])  # type: ignore[arg-type]
        r["miners_fully_evaluated"] = {f"{w:g}s": int(0.5 * w / per_eval)
                                       for w in args.window_s}
        out.append(r)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
