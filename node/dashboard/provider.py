"""What the dashboard reads from: anything with an async `snapshot()` and a `health()`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from node.status import Snapshot


@runtime_checkable
class SnapshotProvider(Protocol):
    async def snapshot(self) -> Snapshot:
        """The current state; may raise (the routes answer 503, the server lives on)."""
        ...

    def health(self) -> tuple[bool, str]:
        """(ok, reason) for `/healthz`; must be cheap, it is polled by supervisors."""
        ...
