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
* FSDP2: the sharded engine over one rank (NCCL) against the plain engine, both
  bf16: tokens/s, and whether the two encode the same payload bytes;
* validator: evaluations per minute (the update applied alone, own and random
  batches), bf16 against fp32.

Each part runs on its own: one that fails records its error and the rest still
run. `--out FILE` also writes the JSON line there after every part.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from node.engine.config import EngineConfig
from node.engine.data import window_batch
from node.engine.device import resolve_device
from node.engine.evaluator import on_device
from node.engine.inner import InnerConfig
from node.engine.local import EngineSpec, LocalEngine
from node.engine.model import get_config, param_count
from node.engine.ranks import backend_for, init_ranks
from node.engine.sharded import ShardedEngine
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


def _spec(model: str) -> EngineSpec:
    return EngineSpec(model=model, inner=InnerConfig(lr=1e-4, warmup_steps=1, total_steps=100))


def _engine(model: str, device: str, **config: Any) -> LocalEngine:
    return LocalEngine(_spec(model), config=EngineConfig(device=device, **config))


def _release() -> None:
    """Free what the last part left on the device before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _contributions(engine: Any, payloads: list[bytes]) -> list[Any]:
    """Payloads sealed by miners 1, 2, … and selected as every node selects them."""
    wires = []
    for n, payload in enumerate(payloads, start=1):
        who = Identity.from_secret(bytes([n]) * 32)
        wires.append((who.address, seal(who, run_id="gpu", window=0,
                                        base=BaseModel(0, engine.digest()), codec=engine.codec,
                                        manifest=engine.manifest, payload=payload)))
    expect = Expectation("gpu", 0, engine.codec, engine.manifest)
    chosen, _ = select([w for _, w in wires], expect, {a for a, _ in wires})
    return chosen


def outer_step(model: str, device: str, batches: list[torch.Tensor]) -> dict[str, Any]:
    """Two miners' real contributions (trained on the device), applied by an engine on
    the CPU and by one on the device."""
    cpu, dev = _engine(model, "cpu"), _engine(model, device)
    payloads = []
    for n in (1, 2):
        miner = _engine(model, device, precision="bf16", activation_checkpointing=True)
        miner.train(batches[n - 1:n])
        payloads.append(miner.encode())
        del miner
    chosen = _contributions(cpu, payloads)
    cpu.apply(chosen)
    dev.apply(chosen)
    return {"identical": cpu.digest() == dev.digest(), "digest": cpu.digest().hex()[:16]}


def _train_timed(engine: Any, batches: list[torch.Tensor], device: torch.device) -> float:
    _timed(lambda: engine.train(batches[:1]), device)  # warm-up
    seconds, _ = _timed(lambda: engine.train(batches), device)
    return seconds


VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "bf16+compile": {"precision": "bf16", "compile": True},
}


def inner_loop(model: str, device: str, batches: list[torch.Tensor], peak: float,
               names: tuple[str, ...]) -> dict[str, Any]:
    cfg = get_config(model)
    tokens = sum(b.shape[0] * (b.shape[1] - 1) for b in batches)
    flops = 6 * param_count(cfg) * tokens
    out: dict[str, Any] = {}
    for name in names:
        engine = _engine(model, device, activation_checkpointing=True, **VARIANTS[name])
        seconds = _train_timed(engine, batches, engine.device)  # the warm-up compiles
        out[name] = {"tokens_per_s": tokens / seconds,
                     "mfu": flops / seconds / (peak * 1e12) if peak else None}
        del engine
        _release()
    return out


def codec(device: torch.device, side: int) -> dict[str, Any]:
    spec = CodecSpec()
    x = torch.randn(side, side, device=device)
    manifest = (TensorSpec("x", (side, side), "float32"),)
    gb = x.numel() * 4 / 1e9
    copy_s, _ = _timed(lambda: x.clone(), device)
    enc_s, payload = _timed(lambda: encode_payload([compress(x, spec)], manifest, spec), device)
    dec_s, _ = _timed(lambda: [decompress(on_device(st, device), (side, side), spec)
                               for st in decode_payload(payload, manifest, spec)], device)
    return {"tensor_gb": gb, "copy_gb_s": gb / copy_s, "encode_gb_s": gb / enc_s,
            "decode_gb_s": gb / dec_s, "encode_vs_copy": copy_s / enc_s}


def fsdp2(model: str, device: str, batches: list[torch.Tensor]) -> dict[str, Any]:
    """The sharded engine (FSDP2) over one rank against the plain engine, the same
    settings and the same batches: the cost of the sharding machinery itself."""
    config = EngineConfig(device=device, precision="bf16", activation_checkpointing=True)
    tokens = sum(b.shape[0] * (b.shape[1] - 1) for b in batches)
    with tempfile.TemporaryDirectory() as tmp:
        init_ranks(0, 1, Path(tmp) / "rendezvous", backend_for(config))
        try:
            sharded = ShardedEngine(_spec(model), None, config)
            sharded_s = _train_timed(sharded, batches, sharded.device)
            sharded_payload = sharded.encode()
            chosen = _contributions(sharded, [sharded_payload])
            sharded.apply(chosen)
            sharded_digest = sharded.digest()
            del sharded
        finally:
            dist.destroy_process_group()
    _release()
    plain = LocalEngine(_spec(model), config=config)
    plain_s = _train_timed(plain, batches, plain.device)
    same = plain.encode() == sharded_payload
    del plain
    _release()
    cpu = _engine(model, "cpu")
    cpu.apply(chosen)
    return {
        "outer_step_identical": cpu.digest() == sharded_digest,
        "fsdp2_tokens_per_s": tokens / sharded_s,
        "plain_tokens_per_s": tokens / plain_s,
        "fsdp2_vs_plain": plain_s / sharded_s,
        "payload_identical": same,
    }


def repeat(model: str, device: str, batches: list[torch.Tensor]) -> dict[str, Any]:
    """The plain engine twice on the same batches: is one device's Δ repeatable? (The
    contract binds only the outer step; this tells what a payload difference means.)"""
    payloads = []
    for _ in range(2):
        engine = _engine(model, device, precision="bf16", activation_checkpointing=True)
        engine.train(batches)
        payloads.append(engine.encode())
        del engine
        _release()
    return {"payload_identical": payloads[0] == payloads[1]}


def evaluations(model: str, device: str, batches: list[torch.Tensor],
                reps: int = 5) -> dict[str, Any]:
    """Evaluations per minute: one miner's sparse update applied alone to θ (handed
    over on the CPU, as the validator does) and the loss on `batches`."""
    out: dict[str, Any] = {}
    for name, settings in (("fp32", {}), ("bf16", {"precision": "bf16"})):
        engine = _engine(model, device, **settings)
        ev = engine.evaluator()
        theta = engine.full_params()
        update = [compress(torch.randn(s.shape) * 1e-3, engine.codec) for s in engine.manifest]

        def one(ev: Any = ev, theta: list[torch.Tensor] = theta, update: Any = update) -> None:
            ev.load(theta, update, 0.2)
            ev.loss(batches)

        def many(one: Callable[[], None] = one) -> None:
            for _ in range(reps):
                one()

        one()
        seconds, _ = _timed(many, engine.device)
        out[name] = {"evaluations_per_min": 60.0 * reps / seconds}
        del engine, ev, theta
        _release()
    return out


def _part(result: dict[str, Any], name: str, fn: Callable[[], Any], out: Path | None) -> None:
    """Run one part; a failure is recorded under its name and the next part runs."""
    start = time.perf_counter()
    print(f"[{name}] ...", flush=True)
    try:
        result[name] = fn()
    except Exception as exc:  # a check reports every failure and goes on
        traceback.print_exc()
        result[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(f"[{name}] {time.perf_counter() - start:.1f} s", flush=True)
    _release()
    if out is not None:
        out.write_text(json.dumps(result) + "\n")


def _print_table(result: dict[str, Any]) -> None:
    print(f"GPU check on {result['device']}, model {result['model']}, torch {result['torch']}")
    for part, value in result.items():
        if isinstance(value, dict) and "error" in value:
            print(f"  {part}: FAILED {value['error']}")
    if "identical" in result.get("outer_step", {}):
        print(f"  outer step CPU == device: {result['outer_step']['identical']}")
    for k, v in {**result.get("inner_loop", {}), **result.get("inner_compiled", {})}.items():
        if isinstance(v, dict) and "tokens_per_s" in v:
            mfu = f", MFU {v['mfu']:.1%}" if v["mfu"] else ""
            print(f"  inner loop {k:13s} {v['tokens_per_s']:12,.0f} tokens/s{mfu}")
    f = result.get("fsdp2", {})
    if "fsdp2_vs_plain" in f:
        print(f"  FSDP2 (1 rank) {f['fsdp2_tokens_per_s']:,.0f} tokens/s vs plain "
              f"{f['plain_tokens_per_s']:,.0f} ({f['fsdp2_vs_plain']:.3f}x), "
              f"payload identical: {f['payload_identical']}, "
            f"outer step == CPU: {f['outer_step_identical']}")
    if "payload_identical" in result.get("repeat", {}):
        print(f"  plain engine twice, payload identical: {result['repeat']['payload_identical']}")
    c = result.get("codec", {})
    if "encode_gb_s" in c:
        print(f"  codec encode {c['encode_gb_s']:.2f} GB/s, decode {c['decode_gb_s']:.2f} GB/s, "
              f"copy {c['copy_gb_s']:.1f} GB/s (encode/copy {c['encode_vs_copy']:.3f})")
    for k, v in result.get("validator", {}).items():
        if isinstance(v, dict):
            print(f"  validator {k}: {v['evaluations_per_min']:.1f} evaluations/min")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="1b")
    p.add_argument("--steps", type=int, default=4, help="inner steps timed")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--codec-side", type=int, default=8192)
    p.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    p.add_argument("--out", type=Path, help="also write the JSON line here after each part")
    p.add_argument("--parts", nargs="+", help="run only these parts (default: all)")
    p.add_argument("--deterministic", action="store_true",
                   help="torch's deterministic algorithms (warn where an op has none)")
    args = p.parse_args()
    if args.deterministic:  # cuBLAS reads its workspace setting when it starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), 0.0)
    seq = min(args.seq_len, get_config(args.model).max_seq_len)
    vocab = get_config(args.model).vocab_size
    batches = _batches(vocab, args.steps, args.rows, seq)
    dev, m = str(device), args.model
    result: dict[str, Any] = {"device": name, "model": m, "torch": torch.__version__,
                              "deterministic": args.deterministic}
    parts: list[tuple[str, Callable[[], Any]]] = [
        ("outer_step", lambda: outer_step(m, dev, batches)),
        ("inner_loop", lambda: inner_loop(m, dev, batches, peak, ("fp32", "bf16"))),
        ("fsdp2", lambda: fsdp2(m, dev, batches)),
        ("repeat", lambda: repeat(m, dev, batches)),
        ("codec", lambda: codec(device, args.codec_side)),
        ("validator", lambda: evaluations(m, dev, batches[:2])),
    ]
    if not args.no_compile:  # last: compiling the first time is the slowest part
        parts.append(("inner_compiled",
                      lambda: inner_loop(m, dev, batches, peak, ("bf16+compile",))))
    for part, fn in parts:
        if args.parts is None or part in args.parts:
            _part(result, part, fn, args.out)
    _print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
