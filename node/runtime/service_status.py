"""A running service as a dashboard `SnapshotProvider` (its own page, /metrics, /healthz)."""

from __future__ import annotations

import time

from node.runtime.chainview import read_chain_snapshot
from node.runtime.core import NodeCore
from node.status import SCHEMA, Snapshot


class ServiceProvider:
    def __init__(self, service: NodeCore) -> None:
        self.service = service

    async def snapshot(self) -> Snapshot:
        return Snapshot(schema=SCHEMA, run=self.service.spec.run, generated_at=time.time(),
                        chain=await read_chain_snapshot(self.service.chain),
                        nodes=[self.service.snapshot()])

    def health(self) -> tuple[bool, str]:
        state = self.service.state
        return state != "stopped", f"{self.service.cfg.name}: {state}, window {self.service.window}"
