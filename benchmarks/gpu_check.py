"""The GPU check: one script, one table, one JSON line (issue 13, docs/benchmarks.md).

Run it whenever a GPU machine is at hand (at most ~8 minutes on one H100/H200):

    python benchmarks/gpu_check.py                    # cuda, the 1b shape
    python benchmarks/gpu_check.py --device cpu --model tiny --steps 2   # smoke run

Measured, each against its baseline in the same run:

* outer step: the same contributions applied by a CPU engine and by an engine on
  the device end on the same θ digest (the determinism contract, docs/protocol.md);
* inner loop: tokens/s and MFU at bf16, eager and compiled, against fp32 eager;
* codec: compress + encode and decode + decompress GB/s of one large tensor,
  against a device copy of the same tensor;
* validator: evaluations per minute (the update applied alone, own and random
  batches), bf16 against fp32.

FSDP2 on one GPU is not measured yet: the sharded engine does not exist (issue 13).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from node.engine.config import EngineConfig
from node.engine.data import window_batch
from node.engine.device import resolve_device
from node.engine.inner import InnerConfig
from node.engine.local import EngineSpec, LocalEngine
from node.engine.model import get_config, param_count
from node.outer.step import select
from protocol.envelope import BaseModel, Expectation, seal
from protocol.identity import Identity
from protocol.sparse import compress, decode_payload, decompress, encode_payload
from protocol.spec import CodecSpec, TensorSpec

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "B200": 2250.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _batches(vocab: int, n: int, rows: int, seq: int) -> list[torch.Tensor]:
    tokens = np.random.default_rng(0).integers(0, vocab, 4_000_000, dtype=np.int64)
    return [window_batch(tokens, seed=0, window=0, uid=0, step=s, batch_size=rows,
                         seq_len=seq) for s in range(n)]


def _engine(model: str, device: str, **config: Any) -> LocalEngine:
    spec = EngineSpec(model=model, inner=InnerConfig(lr=1e-4, warmup_steps=1, total_steps=100))
    return LocalEngine(spec, config=EngineConfig(device=device, **config))


def outer_step(model: str, device: str, batches: list[torch.Tensor]) -> dict[str, Any]:
    """Two miners' real contributions (trained on the device), applied by an engine on
    the CPU and by one on the device."""
    cpu, dev = _engine(model, "cpu"), _engine(model, device)
    wires = []
    for n in (1, 2):
        miner = _engine(model, device, precision="bf16", activation_checkpointing=True)
        miner.train(batches[n - 1:n])
        who = Identity.from_secret(bytes([n]) * 32)
        wires.append((who.address, seal(who, run_id="gpu", window=0,
                                        base=BaseModel(0, miner.digest()), codec=miner.codec,
                                        manifest=miner.manifest, payload=miner.encode())))
    chosen, _ = select([w for _, w in wires], Expectation("gpu", 0, cpu.codec, cpu.manifest),
                       {a for a, _ in wires})
    cpu.apply(chosen)
    dev.apply(chosen)
    return {"identical": cpu.digest() == dev.digest(), "digest": cpu.digest().hex()[:16]}


def inner_loop(model: str, device: str, batches: list[torch.Tensor], peak: float,
               compile_too: bool = True) -> dict[str, Any]:
    cfg = get_config(model)
    tokens = sum(b.shape[0] * (b.shape[1] - 1) for b in batches)
    flops = 6 * param_count(cfg) * tokens
    out: dict[str, Any] = {}
    variants: list[tuple[str, dict[str, Any]]] = [("fp32", {}), ("bf16", {"precision": "bf16"})]
    if compile_too:
        variants.append(("bf16+compile", {"precision": "bf16", "compile": True}))
    for name, settings in variants:
        engine = _engine(model, device, activation_checkpointing=True, **settings)
        dev = engine.device
        _timed(lambda e=engine: e.train(batches[:1]), dev)  # warm-up (and compilation)
        seconds, _ = _timed(lambda e=engine: e.train(batches), dev)
        out[name] = {"tokens_per_s": tokens / seconds,
                     "mfu": flops / seconds / (peak * 1e12) if peak else None}
        del engine
    out["bf16_vs_fp32"] = out["bf16"]["tokens_per_s"] / out["fp32"]["tokens_per_s"]
    return out


def codec(device: torch.device, side: int) -> dict[str, Any]:
    spec = CodecSpec()
    x = torch.randn(side, side, device=device)
    manifest = (TensorSpec("x", (side, side), "float32"),)
    gb = x.numel() * 4 / 1e9
    copy_s, _ = _timed(lambda: x.clone(), device)
    enc_s, payload = _timed(lambda: encode_payload([compress(x, spec)], manifest, spec), device)
    dec_s, _ = _timed(lambda: [decompress(st, (side, side), spec).to(device)
                               for st in decode_payload(payload, manifest, spec)], device)
    return {"tensor_gb": gb, "copy_gb_s": gb / copy_s, "encode_gb_s": gb / enc_s,
            "decode_gb_s": gb / dec_s, "encode_vs_copy": copy_s / enc_s}


def evaluations(model: str, device: str, batches: list[torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, settings in (("fp32", {}), ("bf16", {"precision": "bf16"})):
        engine = _engine(model, device, **settings)
        ev = engine.evaluator()
        theta = engine.full_params()
        update = [compress(torch.randn(s.shape) * 1e-3, engine.codec) for s in engine.manifest]

        def one(ev: Any = ev, theta: list[torch.Tensor] = theta, update: Any = update) -> None:
            ev.load(theta, update, 0.2)
            ev.loss(batches)

        one()
        seconds, _ = _timed(one, engine.device)
        out[name] = {"evaluations_per_min": 60.0 / seconds}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="1b")
    p.add_argument("--steps", type=int, default=4, help="inner steps timed")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--codec-side", type=int, default=8192)
    p.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    args = p.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), 0.0)
    seq = min(args.seq_len, get_config(args.model).max_seq_len)
    vocab = get_config(args.model).vocab_size
    batches = _batches(vocab, args.steps, args.rows, seq)
    result = {"device": name, "model": args.model, "torch": torch.__version__,
              "outer_step": outer_step(args.model, str(device), batches),
              "inner_loop": inner_loop(args.model, str(device), batches, peak,
                                       not args.no_compile),
              "codec": codec(device, args.codec_side),
              "validator": evaluations(args.model, str(device), batches[:2])}
    print(f"GPU check on {name}, model {args.model}")
    print(f"  outer step CPU == device: {result['outer_step']['identical']}")
    for k, v in result["inner_loop"].items():
        if isinstance(v, dict):
            mfu = f", MFU {v['mfu']:.1%}" if v["mfu"] else ""
            print(f"  inner loop {k:13s} {v['tokens_per_s']:12,.0f} tokens/s{mfu}")
    c = result["codec"]
    print(f"  codec encode {c['encode_gb_s']:.2f} GB/s, decode {c['decode_gb_s']:.2f} GB/s, "
          f"copy {c['copy_gb_s']:.1f} GB/s (encode/copy {c['encode_vs_copy']:.3f})")
    for k, v in result["validator"].items():
        print(f"  validator {k}: {v['evaluations_per_min']:.1f} evaluations/min")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
