"""Validator throughput: evaluations per minute on CPU, per proof of assigned data.

One evaluation = what `Validator._evaluate` spends per miner: the own batches'
loss before and the update applied alone at the window's median norms (own +
random batches after), then the proof of assigned data, measured both ways in
the same run:
* "loss" (runs that keep the inner optimizer state): the leave-one-out
  reference update (aggregate of the other miners, applied and evaluated on
  own + random);
* "replay" (runs that reset it each window, the default): the miner's H inner
  steps replayed from θ_global, its share of the one unassigned replay per
  window, and the alignments of every update with every replay.
`replay_vs_loss` is their ratio. Random compressed updates stand in for miners'
(the cost does not depend on the values). Prints JSON.

    .venv/bin/python benchmarks/validator_bench.py --models tiny small --window-s 60 300
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from node.engine.data import stdlib_corpus
from node.engine.inner import InnerConfig
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
    norms = median_norms(updates)
    timing = {}
    for proof in ("loss", "replay"):
        start = time.perf_counter()
        for uid, upd in enumerate(updates):
            own = scoring.own_batches(tokens, scfg, 1, 0, uid)
            ev.load(theta, None, 0.0)
            before = ev.loss(own)
            scoring.loss_score(ev, theta, upd, own, before, rand, rand_before, scfg, norms)
            if proof == "loss":
                others = [(bytes([i]), u) for i, u in enumerate(updates) if i != uid]
                ref, _ = aggregate_sparse(others, manifest, spec)
                scoring.reference_score(ev, theta, ref, own, before, rand, rand_before, scfg)
        if proof == "replay":
            replay_all(ev, theta, tokens, scfg, updates)
        timing[proof] = (time.perf_counter() - start) / miners
    per_eval = timing["replay"]
    return {"model": model_name, "threads": torch.get_num_threads(), "batch_size": batch_size,
            "seq_len": seq_len, "own_batches": steps, "rand_batches": steps,
            "inner_steps_replayed": steps,
            "seconds_per_eval_loss_proof": round(timing["loss"], 4),
            "seconds_per_eval": round(per_eval, 4), "evals_per_minute": round(60 / per_eval, 1),
            "replay_vs_loss": round(per_eval / timing["loss"], 3)}


def replay_all(ev: scoring.Evaluator, theta: list[torch.Tensor], tokens: object,
               scfg: scoring.ScoringConfig, updates: list[list[object]]) -> None:
    """What `Validator._replay_bits` does for one window."""
    inner = InnerConfig(lr=2e-3, warmup_steps=2, total_steps=1000, reset_each_window=True)
    sent = [scoring.attribution_sample(scoring.sent_values(u, ev.manifest, ev.spec), 0)  # type: ignore[arg-type]
            for u in updates]
    assignments = [scoring.assigned_batches(tokens, scfg, 0, u)  # type: ignore[arg-type]
                   for u in range(len(updates))]
    assignments.append(scoring.unassigned_batches(tokens, scfg, 1, 0))  # type: ignore[arg-type]
    columns: list[list[torch.Tensor]] = [[] for _ in sent]
    for batches in assignments:
        replay = ev.replay(theta, batches, inner, first_step=0)
        for s, cols in zip(sent, columns, strict=True):
            cols.append(scoring.at_positions(s, replay))
    for i, (s, cols) in enumerate(zip(sent, columns, strict=True)):
        scoring.replay_evidence(scoring.attribution(s, cols), i)


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
