"""Human output: progress bars and end-of-run summary tables (to stderr)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar; `advance(**fields)` moves it one step."""
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
        console=console, disable=not enabled, transient=False,
    )  # fmt: skip
    with progress:
        task = progress.add_task(description, total=total, status="")

        def advance(status: str = "") -> None:
            progress.update(task, advance=1, status=status)

        yield advance


def simulation_tables(summary: dict[str, Any]) -> list[Table]:
    """Per-round losses, then the run's totals."""
    rounds = Table(title=f"{summary['optimizer']} · {summary['model']} · "
                         f"{summary['miners']} miners")
    rounds.add_column("round", justify="right")
    rounds.add_column("held-out loss", justify="right")
    rounds.add_column("train loss", justify="right")
    losses = summary["heldout_loss"]
    rounds.add_row("start", f"{losses[0]:.4f}", "")
    for i, (held, train) in enumerate(zip(losses[1:], summary["train_loss"], strict=True)):
        rounds.add_row(str(i), f"{held:.4f}", f"{train:.4f}")
    totals = Table(show_header=False, title="totals")
    totals.add_column(justify="left")
    totals.add_column(justify="right")
    totals.add_row("wire bytes / miner / round", human_bytes(summary["wire_bytes_per_miner_round"]))
    totals.add_row("dense fp32 model", human_bytes(summary["dense_fp32_bytes"]))
    totals.add_row("compression ratio", f"{summary['compression_ratio']:.1f}×")
    totals.add_row("params identical", str(summary["params_identical"]))
    totals.add_row("wall time", f"{summary['seconds']:.1f} s")
    return [rounds, totals]
