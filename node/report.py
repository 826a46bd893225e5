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


def simulation_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"gradmesh simulate: {summary['optimizer']} "
                        f"({summary['model']}, {summary['miners']} miners)")
    table.add_column("round", justify="right")
    table.add_column("held-out loss", justify="right")
    table.add_column("train loss", justify="right")
    losses = summary["heldout_loss"]
    table.add_row("start", f"{losses[0]:.4f}", "")
    for i, (held, train) in enumerate(zip(losses[1:], summary["train_loss"], strict=True)):
        table.add_row(str(i), f"{held:.4f}", f"{train:.4f}")
    table.caption = (
        f"wire/miner/round {human_bytes(summary['wire_bytes_per_miner_round'])} · "
        f"dense fp32 {human_bytes(summary['dense_fp32_bytes'])} · "
        f"ratio {summary['compression_ratio']:.1f}× · "
        f"params identical: {summary['params_identical']} · {summary['seconds']:.1f} s"
    )
    return table
