"""The relay's status for `/healthz` and its page: a mesh node without a model."""

from __future__ import annotations

import time
from typing import Any

from node.status import SCHEMA, NodeSnapshot, Snapshot


class RelayProvider:
    def __init__(self, mesh: Any, run: str) -> None:
        self.mesh = mesh
        self.run = run

    async def snapshot(self) -> Snapshot:
        stats = self.mesh.stats()
        node = NodeSnapshot(name="relay", role="miner", address=self.mesh.address.hex(),
                            peer_id=self.mesh.peer_id, state="relaying", window=-1,
                            peers=len(self.mesh.connected_peers()), bytes_in=stats.bytes_in,
                            bytes_out=stats.bytes_out, history=[], timeline=[], scores=[])
        return Snapshot(schema=SCHEMA, run=self.run, generated_at=time.time(), chain=None,
                        nodes=[node])

    def health(self) -> tuple[bool, str]:
        return True, f"relay {self.mesh.peer_id}: {len(self.mesh.connected_peers())} peers"
