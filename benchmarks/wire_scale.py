"""A contribution of a large model through the wire, tensor by tensor, with its peak memory.

Synthetic Δ values for every tensor of the model's manifest are made, compressed and
encoded one tensor at a time (what `SparseLoCo.encode` does), sealed, opened under the
run's caps (`limits_for`) and decoded. Peak memory is the process's maximum resident
set above what it held before; the whole Δ in fp32 is printed beside it.

`--outer N` then applies N such contributions to a θ of the model's shape, twice, each
in a fresh process: the eager way (every payload decoded at once, the whole averaged
update built, then subtracted) and tensor by tensor (`SparsePayload` + `SparseMean`, what
the engines do), and prints each one's peak memory above θ and the ratio.

    .venv/bin/python benchmarks/wire_scale.py --model 1b --outer 4
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from node.engine.model import get_config, parameter_shapes
from node.outer.aggregate import SparseMean, aggregate_sparse
from protocol.envelope import BaseModel, Expectation, limits_for, open_envelope, seal
from protocol.identity import Identity
from protocol.sparse import SparsePayload, SparseTensor, compress, decode_payload, encode_payload
from protocol.spec import CodecSpec, TensorSpec


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def setup(model: str, index_coding: str) -> tuple[tuple[TensorSpec, ...], CodecSpec]:
    cfg = get_config(model)
    manifest = tuple(TensorSpec(n, s, "float32") for n, s in parameter_shapes(cfg))
    return manifest, CodecSpec("sparseloco", 64, 64, 2, index_coding)


def run(model: str, index_coding: str, keep: str | None = None) -> dict[str, object]:
    torch.set_num_threads(1)
    manifest, codec = setup(model, index_coding)
    limits = limits_for(manifest, codec)
    before = rss_mib()
    gen = torch.Generator().manual_seed(0)

    def tensors() -> Iterator[SparseTensor]:
        for spec in manifest:
            yield compress(torch.randn(spec.shape, generator=gen) * 1e-3, codec)

    start = time.perf_counter()
    payload = encode_payload(tensors(), manifest, codec)
    encoded = time.perf_counter() - start
    who = Identity.from_secret(bytes([7]) * 32)
    wire = seal(who, run_id="scale", window=0, base=BaseModel(0, bytes(32)), codec=codec,
                manifest=manifest, payload=payload)
    envelope = open_envelope(wire, Expectation("scale", 0, codec, manifest), limits)
    start = time.perf_counter()
    decoded = decode_payload(envelope.payload, manifest, codec, limits)
    decode_s = time.perf_counter() - start
    if keep:
        with open(keep, "wb") as f:
            f.write(envelope.payload)
    n = sum(math.prod(t.shape) for t in manifest)
    return {"model": model, "parameters": n, "index_coding": index_coding,
            "envelope_bytes": len(wire), "envelope_cap": limits.max_envelope_bytes,
            "tensors_decoded": len(decoded), "compression_ratio": 4 * n / len(wire),
            "dense_fp32_mib": 4 * n / 2**20, "peak_extra_mib": rss_mib() - before,
            "encode_s": encoded, "decode_s": decode_s}


def outer_step(model: str, index_coding: str, path: str, n: int, lazy: bool,
               out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """In a fresh process: θ of the model's shape, then n contributions applied."""
    torch.set_num_threads(1)
    manifest, codec = setup(model, index_coding)
    params = [torch.zeros(t.shape) for t in manifest]
    with open(path, "rb") as f:
        payload = f.read()
    before = rss_mib()
    start = time.perf_counter()
    signers = [bytes([i + 1]) * 20 for i in range(n)]
    if lazy:
        mean = SparseMean([(a, SparsePayload(payload, manifest, codec)) for a in signers],
                          manifest, codec)
        for p, u in zip(params, mean, strict=True):
            p.sub_(u)
    else:
        decoded = [(a, decode_payload(payload, manifest, codec)) for a in signers]
        update, _ = aggregate_sparse(decoded, manifest, codec)
        for p, u in zip(params, update, strict=True):
            p.sub_(u)
    out.put({"lazy": lazy, "peak_above_theta_mib": rss_mib() - before,
             "seconds": time.perf_counter() - start})


def compare_outer(model: str, index_coding: str, path: str, n: int) -> dict[str, object]:
    ctx = multiprocessing.get_context("spawn")
    results = {}
    for lazy in (False, True):
        queue = ctx.Queue()
        proc = ctx.Process(target=outer_step, args=(model, index_coding, path, n, lazy, queue))
        proc.start()
        results["lazy" if lazy else "eager"] = queue.get()
        proc.join()
    eager, lazy_r = results["eager"], results["lazy"]
    ratio = eager["peak_above_theta_mib"] / max(lazy_r["peak_above_theta_mib"], 1.0)
    return {"contributions": n, "eager": eager, "tensor_by_tensor": lazy_r,
            "memory_ratio": ratio}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="1b")
    p.add_argument("--index-coding", default="gap")
    p.add_argument("--outer", type=int, default=0, metavar="N",
                   help="also apply N contributions to θ, eager vs tensor by tensor")
    args = p.parse_args()
    keep = str(Path(tempfile.mkdtemp()) / "contribution.payload")
    r = run(args.model, args.index_coding, keep if args.outer else None)
    print(f"{r['model']}: {r['parameters']:,} parameters, envelope "
          f"{r['envelope_bytes'] / 2**20:.1f} MiB (cap {r['envelope_cap'] / 2**20:.1f} MiB, "
          f"{r['compression_ratio']:.0f}×); peak memory above the start "
          f"{r['peak_extra_mib']:.0f} MiB vs {r['dense_fp32_mib']:.0f} MiB for the whole Δ; "
          f"encode {r['encode_s']:.1f} s, decode {r['decode_s']:.1f} s")
    if args.outer:
        o = compare_outer(args.model, args.index_coding, keep, args.outer)
        e, t = o["eager"], o["tensor_by_tensor"]
        print(f"outer step of {args.outer} contributions, peak memory above θ: eager "
              f"{e['peak_above_theta_mib']:.0f} MiB ({e['seconds']:.1f} s), tensor by tensor "
              f"{t['peak_above_theta_mib']:.0f} MiB ({t['seconds']:.1f} s): "
              f"{o['memory_ratio']:.1f}x less")
        r["outer"] = o
    print(json.dumps(r))


if __name__ == "__main__":
    main()
