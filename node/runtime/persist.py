"""What a node keeps and leaves for others: θ on its own disk (`save_local`),
checkpoints served to peers and written behind the window loop (`save_checkpoint`,
node/runtime/checkpointer.py), and the signed window and head records that let a
peer replay what it applied and find its checkpoint (node/runtime/records.py).

A mixin of `NodeCore` (node/runtime/core.py); the attributes below are the node's.
It never decides what θ is: it only stores and names what the window loop made. A
record that cannot be stored is logged and skipped, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from node.engine.base import Engine
from node.mesh.base import Mesh
from node.mesh.errors import MeshError
from node.runtime.checkpoint import make_checkpoint
from node.runtime.checkpointer import Checkpointer, Snapshot
from node.runtime.records import HeadRecord, WindowRecord, head_key, window_key
from node.runtime.runspec import RunSpec
from protocol.identity import Identity
from protocol.spec import Manifest

log = logging.getLogger(__name__)


class Persistence:
    """Checkpoints and records of a node; the attributes below are the node's."""

    spec: RunSpec
    identity: Identity
    mesh: Mesh
    engine: Engine
    manifest: Manifest
    checkpointer: Checkpointer
    checkpoint: tuple[int, bytes] | None
    applied: int
    digest: bytes

    if TYPE_CHECKING:  # the node's own (node/runtime/core.py)
        def event(self, window: int, text: str) -> None: ...

    async def _put_window_record(self, window: int, inputs: list[tuple[bytes, bytes]]) -> None:
        record = WindowRecord(window, self.digest, tuple(inputs))
        try:
            await self.mesh.put_record(window_key(self.spec.run, window, self.identity.address),
                                       record.encode())
        except (MeshError, TimeoutError) as exc:
            log.warning("window record %d not stored: %s", window, exc)

    async def _put_head(self) -> None:
        ckpt_window, ckpt_sha = self.checkpoint or (-1, b"")
        head = HeadRecord(self.applied, self.digest, ckpt_window, ckpt_sha, self.mesh.peer_id,
                          tuple(self.mesh.dial_addrs))
        try:
            await self.mesh.put_record(head_key(self.spec.run, self.identity.address),
                                       head.encode())
        except (MeshError, TimeoutError) as exc:
            log.warning("head record not stored: %s", exc)

    async def save_local(self) -> None:
        """θ and the engine's local state, to this node's disk, labelled (as every
        checkpoint) with the first window not applied to it."""
        await asyncio.to_thread(self.engine.save_local, self.applied + 1,
                                {"digest": self.digest.hex(), "run": self.spec.run})

    async def save_checkpoint(self, *, wait: bool = True) -> None:
        """Checkpoint θ: locally, and served to peers (labelled as `save_local`). The
        caller waits for the snapshot alone when `wait` is False; the rest is written
        behind it (node/runtime/checkpointer.py)."""
        if wait:
            await self.checkpointer.wait()
        elif not self.checkpointer.ready(self.applied + 1):
            return
        params = await asyncio.to_thread(self.engine.full_params)
        state = await asyncio.to_thread(self.engine.local_state)
        self.checkpointer.start(Snapshot(self.applied + 1, params, state,
                                         {"digest": self.digest.hex(), "run": self.spec.run}))
        if wait:
            await self.checkpointer.wait()

    async def _write_checkpoint(self, snap: Snapshot) -> None:
        """A snapshot to this node's disk, then signed and served to peers; the head record
        names it."""
        await asyncio.to_thread(self.engine.write_local, snap.window, snap.params, snap.state,
                                snap.meta)
        manifest, chunks = await asyncio.to_thread(
            make_checkpoint, self.identity, run=self.spec.run, window=snap.window,
            model=self.spec.model, manifest=self.manifest, params=snap.params)
        for chunk in chunks:
            await self.mesh.hold(snap.window, chunk)
        self.checkpoint = (snap.window, await self.mesh.hold(snap.window, manifest.encode()))
        self.event(snap.window, "checkpoint")
        await self._put_head()
