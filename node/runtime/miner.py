"""The miner daemon: register, sync, then per window train → publish → gather → step.

Windows follow the chain's blocks. A miner trains in a window only if it saw
the window begin (so it had the whole window and heard every announcement);
otherwise it lets the window pass and replays it from peers' records. On stop
(SIGTERM) it abandons the window in progress — θ stays at that window's start,
which is exactly what it checkpoints — and leaves the mesh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from chain.errors import ChainError
from node.runtime.chainview import AsyncChain
from node.engine.inner import InnerTrainer
from node.mesh.base import Mesh, MeshError
from node.engine.model import param_count
from node.runtime.core import NodeConfig, NodeCore
from node.outer.optimizers import OuterConfig, SparseLoCo
from node.runtime.runspec import RunAssets, RunSpec
from protocol.envelope import BaseModel, seal
from protocol.identity import Identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    train_loss: float
    ratio: float  # dense fp32 bytes / envelope bytes
    wire_bytes: int


class MinerService(NodeCore):
    role = "miner"

    def __init__(self, config: NodeConfig, spec: RunSpec, assets: RunAssets, identity: Identity,
                 mesh: Mesh, chain: AsyncChain, *, stake: int) -> None:
        super().__init__(config, spec, assets, identity, mesh, chain, stake=stake)
        self.trainer = InnerTrainer(self.model, spec.inner_config())
        self.outer = SparseLoCo(OuterConfig(k=spec.k, index_coding=spec.codec.index_coding,
                                            lr=spec.outer_lr), self.manifest)
        self.dense_bytes = 4 * param_count(assets.model_config)

    # --- local state kept across restarts ---------------------------------------------
    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"error.{i}": e.clone() for i, e in enumerate(self.outer.error)}

    def restore_extra(self, extra: dict[str, torch.Tensor]) -> None:
        for i, buf in enumerate(self.outer.error):
            saved = extra.get(f"error.{i}")
            if saved is not None and saved.shape == buf.shape:
                buf.copy_(saved)

    # --- lifecycle ----------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Keep θ at the start of the window in progress (and the error feedback)."""
        if self.window >= 0:
            params = [p.detach().clone() for p in self.params]
            await asyncio.to_thread(self.store.save, self.window, params, self.extra_state(),
                                    {"digest": self.digest.hex(), "run": self.spec.run})
            self.event(self.window, "state flushed")

    async def work(self, window: int, whole: bool) -> Trained | None:
        if not whole:
            self.event(window, "joined mid-window: not training this window")
            return None
        return await self._train_and_publish(window)

    async def finish(self, window: int, started: float, ended: float,
                      trained: Trained | None) -> None:
        await self.finish_window(window, started=started,
                                 train_loss=trained.train_loss if trained else None,
                                 ratio=trained.ratio if trained else None)

    async def _train_and_publish(self, window: int) -> Trained | None:
        self.state = "training"
        began = time.time()
        batches = [self.assets.batch(window, self.uid, s) for s in range(self.spec.inner_steps)]
        result = await asyncio.to_thread(self.trainer.run, batches)
        payload = await asyncio.to_thread(self.outer.encode, result.delta)
        wire = seal(self.identity, run_id=self.spec.run, window=window,
                    base=BaseModel(step=window, digest=self.digest), codec=self.spec.codec,
                    manifest=self.manifest, payload=payload)
        try:
            if await self.chain.window() != window:
                self.event(window, "training overran the window: not published")
                return None
            ann = await self.mesh.announce(window, wire)
        except (ChainError, MeshError) as exc:
            self.event(window, f"not published: {exc}")
            return None
        self.gatherer.add_own(window, wire, ann.sha256)
        loss = float(np.mean(result.losses))
        self.event(window, f"published {len(wire)} B (train loss {loss:.3f}, "
                           f"{time.time() - began:.1f} s)")
        return Trained(loss, self.dense_bytes / len(wire), len(wire))
