"""Whole-model wire compression: sealed envelope bytes vs dense fp32.

    python benchmarks/compression.py --model small

Trains H inner steps of the model on the embedded corpus to get a real
pseudo-gradient, runs it through SparseLoCo's encoder with each index coding,
seals it (header, signature, every tensor's table, framing) and divides the
dense fp32 size of the model by the envelope's length.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

from node.engine.data import stdlib_corpus, window_batch
from node.engine.inner import InnerConfig, InnerTrainer
from node.engine.model import build_model, get_config, model_manifest, param_count
from node.outer.optimizers import OuterConfig, SparseLoCo
from protocol.envelope import BaseModel, seal
from protocol.identity import Identity
from protocol.sparse import chunk_layout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()

    cfg = get_config(args.model)
    model = build_model(cfg, seed=0)
    manifest = model_manifest(model)
    corpus = stdlib_corpus(8 * 2**20)
    trainer = InnerTrainer(model, InnerConfig(warmup_steps=1, total_steps=args.inner_steps))
    started = time.perf_counter()
    delta = trainer.run([window_batch(corpus.train, seed=0, window=0, uid=0, step=s,
                                      batch_size=args.batch_size, seq_len=args.seq_len)
                         for s in range(args.inner_steps)]).delta
    print(f"{args.inner_steps} inner steps in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    dense = 4 * param_count(cfg)
    entries = sum(chunk_layout(t.shape, OuterConfig().codec).n_entries for t in manifest)
    print(f"model {args.model}: {param_count(cfg):,} parameters, {len(manifest)} tensors, "
          f"dense fp32 {dense:,} bytes, {entries:,} entries sent per window\n")
    print("| index coding | envelope bytes | bits per sent entry | compression vs dense fp32 "
          "| encode s |")
    print("|---|---|---|---|---|")
    key = Identity.from_secret(hashlib.sha256(b"bench").digest())
    for coding in ("fixed12", "gap"):
        outer = SparseLoCo(OuterConfig(index_coding=coding), manifest)  # type: ignore[arg-type]
        started = time.perf_counter()
        payload = outer.encode(delta)
        wire = seal(key, run_id="bench", window=0, base=BaseModel(0, b"\0" * 32),
                    codec=outer.codec, manifest=manifest, payload=payload)
        seconds = time.perf_counter() - started
        print(f"| {coding} | {len(wire):,} | {8 * len(wire) / entries:.2f} "
              f"| {dense / len(wire):.1f}× | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
