"""A contribution of a large model through the wire, tensor by tensor, with its peak memory.

Synthetic Δ values for every tensor of the model's manifest are made, compressed and
encoded one tensor at a time (what `SparseLoCo.encode` does), sealed, opened under the
run's caps (`limits_for`) and decoded. Peak memory is the process's maximum resident
set above what it held before; the whole Δ in fp32 is printed beside it.

    .venv/bin/python benchmarks/wire_scale.py --model 1b
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from collections.abc import Iterator

import torch

from node.engine.model import get_config, parameter_shapes
from protocol.envelope import BaseModel, Expectation, limits_for, open_envelope, seal
from protocol.identity import Identity
from protocol.sparse import SparseTensor, compress, decode_payload, encode_payload
from protocol.spec import CodecSpec, TensorSpec


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(model: str, index_coding: str) -> dict[str, object]:
    torch.set_num_threads(1)
    cfg = get_config(model)
    manifest = tuple(TensorSpec(n, s, "float32") for n, s in parameter_shapes(cfg))
    codec = CodecSpec("sparseloco", 64, 64, 2, index_coding)
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
    n = sum(math.prod(t.shape) for t in manifest)
    return {"model": model, "parameters": n, "index_coding": index_coding,
            "envelope_bytes": len(wire), "envelope_cap": limits.max_envelope_bytes,
            "tensors_decoded": len(decoded), "compression_ratio": 4 * n / len(wire),
            "dense_fp32_mib": 4 * n / 2**20, "peak_extra_mib": rss_mib() - before,
            "encode_s": encoded, "decode_s": decode_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="1b")
    p.add_argument("--index-coding", default="gap")
    args = p.parse_args()
    r = run(args.model, args.index_coding)
    print(f"{r['model']}: {r['parameters']:,} parameters, envelope "
          f"{r['envelope_bytes'] / 2**20:.1f} MiB (cap {r['envelope_cap'] / 2**20:.1f} MiB, "
          f"{r['compression_ratio']:.0f}×); peak memory above the start "
          f"{r['peak_extra_mib']:.0f} MiB vs {r['dense_fp32_mib']:.0f} MiB for the whole Δ; "
          f"encode {r['encode_s']:.1f} s, decode {r['decode_s']:.1f} s")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
