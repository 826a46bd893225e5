"""`gradmesh eval`: held-out perplexity and lm-eval tasks on an exported model folder.

This module only parses the command's flags and prints what node/engine/lmeval.py
returns: one held-out perplexity line (or why there is none) and a table of task
scores on stdout, or one JSON object with --json. It computes nothing itself and
never imports lm-eval (the engine does, lazily: it is the optional `eval` extra).
docs/export.md ("Evaluation") describes the command and the local task format.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_eval_commands", "parse_tasks"]


def parse_tasks(text: str) -> list[str]:
    """'a,b, c' -> ['a', 'b', 'c']; an argparse type for --tasks."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected NAME[,NAME...], got {text!r}")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_eval_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="held-out perplexity and lm-eval tasks on an exported model",
                       description="Evaluate a Hugging Face folder written by `gradmesh "
                                   "export`: held-out perplexity, then lm-eval tasks "
                                   "(the optional eval extra), offline.")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="exported model folder")
    p.add_argument("--tasks", type=parse_tasks, default=[], metavar="NAME,...",
                   help="lm-eval task names (default: every task in --task-dir)")
    p.add_argument("--task-dir", type=Path, help="folder of local YAML task files")
    p.add_argument("--heldout", type=Path, metavar="DIR",
                   help="prepared data folder (`gradmesh data prepare`) whose held-out "
                        "split gives the perplexity")
    p.add_argument("--heldout-tokens", type=_positive, default=65536, metavar="N",
                   help="held-out tokens scored at most")
    p.add_argument("--limit", type=_positive, metavar="N", help="examples per task at most")
    p.add_argument("--batch-size", type=_positive, default=1, metavar="N")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from node.engine.lmeval import HeldoutRun, TaskRun, evaluate_model

    report = evaluate_model(
        args.model_dir, tasks=args.tasks, task_dir=args.task_dir,
        heldout=HeldoutRun(args.heldout, args.heldout_tokens, args.batch_size),
        run=TaskRun(args.limit, args.batch_size, args.device))
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        _print_report(report)
    return 0


def heldout_line(report: Any) -> str:
    found = report.heldout
    if found is None:
        return str(report.heldout_note)
    return (f"held-out perplexity {found.perplexity:.4f} (mean loss {found.mean_loss:.6f} "
            f"nats over {found.tokens:,} tokens of {found.source})")


def _print_report(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    print(heldout_line(report))
    if not report.scores:
        return
    table = Table(title=f"{report.model} · lm-eval {report.lm_eval_version or '?'}")
    for column in ("task", "metric", "value", "stderr", "examples"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for s in report.scores:
        table.add_row(s.task, s.metric, f"{s.value:.4f}",
                      "" if s.stderr is None else f"{s.stderr:.4f}",
                      "" if s.samples is None else str(s.samples))
    Console(width=100).print(table)
