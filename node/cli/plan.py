"""`gradmesh plan`: what a box needs and spends per window, before it joins a run.

Memory per GPU (parameters, gradients, AdamW state, error feedback, activations),
bytes published and gathered per window, and communication time at the given
bandwidth against the window's compute time (node/engine/plan.py). One table on
stdout, or one JSON object with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from node.cli.common import add_flag

__all__ = ["add_plan_commands"]


def add_plan_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from node.engine.model import MODEL_CONFIGS
    from protocol.spec import INDEX_CODINGS

    p = sub.add_parser("plan", help="memory, bytes and seconds per window for one box",
                       description="A miner's economics before joining: per-GPU memory, "
                                   "bytes per window and communication vs compute time.")
    add_flag(p, "--model", env="MODEL", choices=sorted(MODEL_CONFIGS), default="1b")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU")
    p.add_argument("--bandwidth", type=float, default=500.0, help="Mbit/s each way")
    p.add_argument("--gpu-tflops", type=float, default=989.0,
                   help="dense bf16 peak per GPU (H100 SXM: 989)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per pass")
    p.add_argument("--activation-checkpointing", choices=["on", "off"], default="on")
    p.add_argument("--offload-error-feedback", choices=["on", "off"], default="off")
    p.add_argument("--inner-steps", type=int, default=30, help="H")
    p.add_argument("--batch-size", type=int, default=192, help="sequences per inner step")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--k", type=int, default=64, help="entries kept per 64x64 chunk")
    p.add_argument("--index-coding", choices=INDEX_CODINGS, default="gap")
    p.add_argument("--gathered", type=int, default=16,
                   help="contributions gathered per window (the aggregation set)")
    p.add_argument("--vocab-size", type=int, help="the run tokenizer's (default: the model's)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from node.engine.plan import Box, Workload, plan
    from protocol.spec import CodecSpec

    box = Box(gpus=args.gpus, gpu_mem_gib=args.gpu_mem, bandwidth_mbit=args.bandwidth,
              gpu_tflops=args.gpu_tflops, mfu=args.mfu, micro_batch=args.micro_batch,
              activation_checkpointing=args.activation_checkpointing == "on",
              offload_error_feedback=args.offload_error_feedback == "on")
    work = Workload(inner_steps=args.inner_steps, batch_size=args.batch_size,
                    seq_len=args.seq_len, gathered=args.gathered,
                    codec=CodecSpec("sparseloco", 64, args.k, 2, args.index_coding))
    result = plan(args.model, box, work, args.vocab_size)
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result)
    return 0


def _print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    box, mem, win = r["box"], r["memory_gib_per_gpu"], r["window"]
    table = Table(title=f"{r['model']} ({r['parameters'] / 1e9:.2f}B parameters) on "
                        f"{box['gpus']} × {box['gpu_mem_gib']:g} GiB, "
                        f"{box['bandwidth_mbit']:g} Mbit/s", show_header=False)
    for part in ("parameters", "gradients", "adamw_state", "error_feedback", "activations"):
        table.add_row(f"memory per GPU: {part.replace('_', ' ')}", f"{mem[part]:.2f} GiB")
    verdict = "fits" if r["fits"] else "does NOT fit"
    table.add_row("memory per GPU: total", f"{mem['total']:.2f} GiB ({verdict})")
    table.add_row("published per window (at most)", f"{win['bytes_published'] / 2**20:,.1f} MiB "
                                          f"({win['compression_ratio']:.0f}× vs fp32)")
    table.add_row("gathered per window", f"{win['bytes_gathered'] / 2**30:,.2f} GiB")
    table.add_row("compute per window", f"{win['compute_s']:,.0f} s "
                                        f"({win['tokens']:,} tokens)")
    table.add_row("upload (swarmed / to each)",
                  f"{win['upload_once_s']:,.0f} s / {win['upload_to_each_s']:,.0f} s")
    table.add_row("download", f"{win['download_s']:,.0f} s")
    table.add_row("communication share", f"{100 * win['communication_share']:.1f}% of the "
                                         "window (not overlapped)")
    Console(file=sys.stdout).print(table)
