"""The miner daemon: register, sync, then per window train → publish → gather → step.

Windows follow the chain's blocks. A miner trains in a window only if it saw
the window begin (so it had the whole window and heard every announcement);
otherwise it lets the window pass and replays it from peers' records. On stop
(SIGTERM) it abandons the window in progress — θ stays at that window's start,
which is exactly what it checkpoints — and leaves the mesh.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from chain.errors import ChainError
from node.engine.base import Engine
from node.mesh.errors import MeshError
from node.runtime.core import NodeCore
from node.runtime.publish import commit_then_hold
from protocol.baseproof import base_proof, proof_positions
from protocol.envelope import BaseModel, seal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    train_loss: float
    ratio: float  # dense fp32 bytes / envelope bytes
    wire_bytes: int


def prove_base(engine: Engine, payload: bytes) -> bytes:
    """The base proof of `payload` (protocol/baseproof.py) from the engine's θ, which is
    θ_global at the window's start while a contribution is being sealed."""
    payload_hash = hashlib.sha256(payload).digest()
    return base_proof(payload_hash, engine.sample(proof_positions(payload_hash,
                                                                  engine.manifest)))


class MinerService(NodeCore):
    role = "miner"

    async def shutdown(self) -> None:
        """Keep θ at the start of the window in progress (and the error feedback)."""
        if self.window >= 0:
            await self.save_local()
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
        fold = self.public_batch()
        public = fold(window)[0] if fold is not None else None
        losses = await asyncio.to_thread(self.engine.train, batches,
                                          self.spec.first_step(window), public)
        payload = await asyncio.to_thread(self.engine.encode)
        proof = await asyncio.to_thread(prove_base, self.engine, payload)
        wire = seal(self.identity, run_id=self.spec.run, window=window,
                    base=BaseModel(step=window, digest=self.digest, proof=proof),
                    codec=self.spec.codec, manifest=self.manifest, payload=payload)
        try:
            if await self.chain.window() != window:
                self.event(window, "training overran the window: not published")
                return None
            if self.spec.commit_phase > 0.0:
                why = await commit_then_hold(self.chain, window, wire, self.spec.commit_phase,
                                             poll=self.cfg.poll, stop=self.stopping)
                if why is not None:
                    self.event(window, f"not published: {why}")
                    return None
            ann = await self.mesh.announce(window, wire)
        except (ChainError, MeshError) as exc:
            self.event(window, f"not published: {exc}")
            return None
        self.gatherer.add_own(window, wire, ann.sha256)
        loss = float(np.mean(losses))
        self.event(window, f"published {len(wire)} B (train loss {loss:.3f}, "
                           f"{time.time() - began:.1f} s)")
        dense = 4 * sum(math.prod(t.shape) for t in self.manifest)  # θ as fp32
        return Trained(loss, dense / len(wire), len(wire))
