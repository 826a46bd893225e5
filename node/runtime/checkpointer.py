"""Checkpoints written behind the window loop.

The loop pays only for a snapshot: θ and the node's local state copied to CPU
memory by the engine (`full_params`, `local_state`). Writing the snapshot to this
node's disk, building and signing the public checkpoint and handing its chunks to
the mesh run in one task beside the loop, while the next window trains. One
checkpoint is in the works at a time: one falling due while the last is still
being written is skipped (the next is due `checkpoint_every` windows later). A
failure is reported to the node's timeline, never raised into the loop.

Must never: touch the engine's θ or state (it reads only the snapshot it was
given), or let a write outlive the node (`wait` before the node stops).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from torch import Tensor

from node.engine.store import MetaValue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """θ and the local state as they were when taken, labelled (as every checkpoint)
    with the first window not applied to them."""

    window: int
    params: list[Tensor]
    state: dict[str, Tensor]
    meta: dict[str, MetaValue]


class Checkpointer:
    """Runs `write(snapshot)` in the background, one at a time; `report(window, text)`
    hears of failures and skips."""

    def __init__(self, write: Callable[[Snapshot], Awaitable[None]],
                 report: Callable[[int, str], None]) -> None:
        self._write = write
        self._report = report
        self._task: asyncio.Task[None] | None = None
        self.written = 0  # checkpoints finished
        self.skipped = 0  # checkpoints not started: the last one was still being written

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def ready(self, window: int) -> bool:
        """Whether a checkpoint may begin; if not, window `window`'s is counted and
        reported as skipped (the last one is still being written)."""
        if not self.busy:
            return True
        self.skipped += 1
        self._report(window, "checkpoint skipped: the last one is still being written")
        return False

    def start(self, snapshot: Snapshot) -> None:
        """Begin writing `snapshot` (after `ready`, or `wait`)."""
        if self.busy:
            raise RuntimeError("a checkpoint is still being written")
        self._task = asyncio.create_task(self._run(snapshot))

    async def wait(self) -> None:
        """Until the checkpoint in the works (if any) is written or has failed."""
        if self._task is not None:
            await asyncio.wait({self._task})  # its errors are reported by `_run`

    async def _run(self, snapshot: Snapshot) -> None:
        try:
            await self._write(snapshot)
            self.written += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a full disk, a stopped mesh: the node goes on
            log.warning("checkpoint of window %d failed: %r", snapshot.window, exc)
            self._report(snapshot.window, f"checkpoint failed: {type(exc).__name__}: {exc}")
