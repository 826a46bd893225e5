"""Throughput and memory of the SparseLoCo codec against dense baselines.

For each size, a 2-D tensor whose sides are multiples of 64 (so every chunk is a
full 64x64 block) is timed through:

* encode = compress + encode_payload, decode = decode_payload (+ copy to the
  device) + decompress, in GB/s of fp32 input;
* baselines measured in the same run: `x.clone()` and `torch.topk` alone on the
  chunk view of |x|; codec times are reported as ratios to them;
* peak memory: on CPU each of encode and decode runs once in a fresh
  subprocess and reports peak-RSS (VmHWM) growth over its own baseline taken after the
  input is allocated; on CUDA torch.cuda.max_memory_allocated over the
  allocation before the call;
* compression ratio of the payload against dense fp32.

    python benchmarks/codec_bench.py --sizes 1e5,1e6,1e7 --device cpu --markdown
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.sparse import (
    SparseTensor,
    chunk_layout,
    compress,
    decode_payload,
    decompress,
    encode_payload,
)
from protocol.sparse.layout import chunk_magnitudes
from protocol.spec import CodecSpec, TensorSpec

MB = 1024 * 1024


def shape_for(size: float) -> tuple[int, int]:
    """2-D shape of about `size` elements made of whole 64x64 blocks (<= 4096 wide)."""
    blocks = max(1, round(size / 4096))
    cols = min(blocks, 64)
    rows = max(1, round(blocks / cols))
    return 64 * rows, 64 * cols


def make_input(shape: tuple[int, int], device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen).to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def encode(x: torch.Tensor, manifest: tuple[TensorSpec, ...], spec: CodecSpec) -> bytes:
    return encode_payload([compress(x, spec)], manifest, spec)


def decode(payload: bytes, manifest: tuple[TensorSpec, ...], spec: CodecSpec,
           device: str) -> torch.Tensor:
    st = decode_payload(payload, manifest, spec)[0]
    moved = SparseTensor(st.indices.to(device), st.codes.to(device), st.table.to(device))
    return decompress(moved, manifest[0].shape, spec)


# --- peak memory ------------------------------------------------------------------------------


def maxrss_bytes() -> int:
    """Peak RSS of this process image.

    VmHWM, not ru_maxrss: ru_maxrss survives execve, so a child started from
    a big parent would report the parent's peak and hide its own growth.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(args: argparse.Namespace) -> None:
    """Run one encode or decode in this fresh process; print the RSS growth."""
    spec = CodecSpec(index_coding=args.index_coding)
    shape = shape_for(args.child_size)
    manifest = (TensorSpec("w", shape),)
    # warm up lazy initialisation (allocator pools, kernels) on a small tensor
    small = (TensorSpec("w", (64, 64)),)
    decode(encode(torch.randn(64, 64), small, spec), small, spec, "cpu")
    if args.child == "encode":
        x = make_input(shape, "cpu")
        base = maxrss_bytes()
        encode(x, manifest, spec)
    else:
        payload = Path(args.payload_file).read_bytes()
        base = maxrss_bytes()
        decode(payload, manifest, spec, "cpu")
    print(json.dumps({"growth": maxrss_bytes() - base}))


def cpu_peak(kind: str, size: float, coding: str, payload_file: str, threads: int) -> int:
    cmd = [sys.executable, __file__, "--child", kind, "--child-size", str(size),
           "--index-coding", coding, "--payload-file", payload_file, "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["growth"])


def cuda_peak(fn: Callable[[], object]) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# --- one size ---------------------------------------------------------------------------------


@dataclass
class Row:
    numel: int
    shape: tuple[int, int]
    enc_s: float
    dec_s: float
    clone_s: float
    topk_s: float
    enc_peak: int
    dec_peak: int
    ratio: float


def measure(size: float, args: argparse.Namespace) -> Row:
    device, spec = args.device, CodecSpec(index_coding=args.index_coding)
    shape = shape_for(size)
    manifest = (TensorSpec("w", shape),)
    x = make_input(shape, device)
    payload = encode(x, manifest, spec)
    mags = chunk_magnitudes(x, chunk_layout(shape, spec))
    k = chunk_layout(shape, spec).k
    enc_s = timed(lambda: encode(x, manifest, spec), device, args.repeats)
    dec_s = timed(lambda: decode(payload, manifest, spec, device), device, args.repeats)
    clone_s = timed(x.clone, device, args.repeats)
    topk_s = timed(lambda: torch.topk(mags, k, dim=1, sorted=False), device, args.repeats)
    if device == "cuda":
        enc_peak = cuda_peak(lambda: encode(x, manifest, spec))
        dec_peak = cuda_peak(lambda: decode(payload, manifest, spec, device))
    else:
        with tempfile.NamedTemporaryFile(suffix=".payload") as f:
            f.write(payload)
            f.flush()
            enc_peak = cpu_peak("encode", size, args.index_coding, f.name, args.threads)
            dec_peak = cpu_peak("decode", size, args.index_coding, f.name, args.threads)
    return Row(x.numel(), shape, enc_s, dec_s, clone_s, topk_s, enc_peak, dec_peak,
               4 * x.numel() / len(payload))


def render(rows: list[Row], markdown: bool) -> str:
    head = ["elements", "shape", "enc GB/s", "dec GB/s", "enc/clone", "enc/topk",
            "dec/clone", "enc peak MB (x input)", "dec peak MB (x input)", "ratio"]
    lines = []
    for r in rows:
        gb = 4 * r.numel / 1e9
        inp = 4 * r.numel
        lines.append([
            f"{r.numel:,}", f"{r.shape[0]}x{r.shape[1]}", f"{gb / r.enc_s:.2f}",
            f"{gb / r.dec_s:.2f}", f"{r.enc_s / r.clone_s:.1f}", f"{r.enc_s / r.topk_s:.2f}",
            f"{r.dec_s / r.clone_s:.1f}", f"{r.enc_peak / MB:.1f} ({r.enc_peak / inp:.2f})",
            f"{r.dec_peak / MB:.1f} ({r.dec_peak / inp:.2f})", f"{r.ratio:.1f}x",
        ])
    if not markdown:
        return "\n".join("  ".join(cells) for cells in [head, *lines])
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(table)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1e5,1e6,1e7", help="comma-separated element counts")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--index-coding", choices=["fixed12", "gap"], default="fixed12")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--child", choices=["encode", "decode"], help=argparse.SUPPRESS)
    p.add_argument("--child-size", type=float, help=argparse.SUPPRESS)
    p.add_argument("--payload-file", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA requested but not available")
    rows = [measure(float(s), args) for s in args.sizes.split(",")]
    print(f"device={args.device} index_coding={args.index_coding} repeats={args.repeats} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}\n")
    print(render(rows, args.markdown))


if __name__ == "__main__":
    main()
