"""In-process swarm: N miners training one model over real signed envelopes.

Every miner owns its engine (θ, inner AdamW, outer optimizer state) and key;
they exchange sealed envelopes through a `MemoryBoard`, each verifies and
decodes every peer's bytes itself and applies the daemons' own outer step
(`select`, then `Engine.apply`), so `params_identical` at the end is a real
check of deterministic aggregation.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from node.engine.config import EngineConfig
from node.engine.data import PUBLIC_UID
from node.engine.local import LocalEngine
from node.engine.model import param_count
from node.errors import ConfigError, NodeError
from node.mesh.board import MemoryBoard
from node.outer.optimizers import OuterConfig, OuterOptimizer
from node.outer.step import select
from node.runtime.runspec import RunAssets, RunSpec
from protocol.envelope import BaseModel, Expectation, seal
from protocol.identity import Identity
from protocol.spec import Manifest

OuterFactory = Callable[[OuterConfig, Manifest, int], OuterOptimizer]
"""(the run's outer config, the manifest, the miner's uid) -> that miner's outer optimizer."""


class SimulationError(NodeError):
    """A simulated miner's own envelope did not pass the outer step's rule (a defect)."""


SIM_SPEC = RunSpec(run="sim", inner_steps=30, inner_lr=1e-3, warmup_steps=20, eval_batches=8,
                   corpus_bytes=16 * 2**20, inner_reset=False)
"""The simulator's defaults: longer windows and a gentler inner lr than the devnet's; the
inner optimizer keeps its state across windows (no validator replays here, and the
simulator figures in docs/protocol.md and the README were measured that way)."""


@dataclass(frozen=True)
class SimConfig:
    """A run spec (what the miners agree on) plus the swarm around it."""

    spec: RunSpec = SIM_SPEC
    miners: int = 4
    rounds: int = 10
    threads: int | None = None
    outer: OuterFactory | None = None  # study-only outer optimizers; None: the run spec's
    # one-window-delayed outer step (window w's aggregate applied after window w+1 has
    # trained, as when gathering overlaps training); the daemons do not run it yet
    overlap: bool = False
    engine: EngineConfig | None = None  # operator settings (device, precision); None: CPU fp32

    def __post_init__(self) -> None:
        if self.miners < 1 or self.rounds < 1:
            raise ConfigError("miners and rounds must be at least 1")

    @classmethod
    def build(cls, *, miners: int = 4, rounds: int = 10, threads: int | None = None,
              **spec: Any) -> SimConfig:
        """`SimConfig.build(miners=3, rounds=5, inner_steps=4, optimizer="diloco")`:
        run-spec fields override `SIM_SPEC`."""
        return cls(replace(SIM_SPEC, **spec), miners=miners, rounds=rounds, threads=threads)

    @property
    def run_spec(self) -> RunSpec:
        """The spec with the inner cosine spanning exactly this run (warm-up capped at it)."""
        total = self.rounds * self.spec.inner_steps
        warmup = min(self.spec.warmup_steps, total)
        return replace(self.spec, total_steps=total, warmup_steps=warmup)


@dataclass
class RoundRecord:
    window: int
    heldout_loss: float
    train_loss: float
    wire_bytes_per_miner: float
    seconds: float


@dataclass
class SimResult:
    config: SimConfig
    params: int
    initial_loss: float
    rounds: list[RoundRecord] = field(default_factory=list)
    params_identical: bool = False
    digests: list[str] = field(default_factory=list)

    @property
    def dense_fp32_bytes(self) -> int:
        return 4 * self.params

    @property
    def wire_bytes_per_miner_round(self) -> float:
        return sum(r.wire_bytes_per_miner for r in self.rounds) / max(1, len(self.rounds))

    def to_json(self) -> dict[str, object]:
        spec = self.config.spec
        cfg: dict[str, object] = asdict(spec)
        cfg["data"] = str(spec.data) if spec.data else None
        cfg.update(miners=self.config.miners, rounds=self.config.rounds,
                   threads=self.config.threads)
        return {
            "optimizer": spec.optimizer,
            "index_coding": spec.index_coding,
            "model": spec.model,
            "miners": self.config.miners,
            "rounds": len(self.rounds),
            "params": self.params,
            "heldout_loss": [self.initial_loss] + [r.heldout_loss for r in self.rounds],
            "train_loss": [r.train_loss for r in self.rounds],
            "wire_bytes_per_miner_round": self.wire_bytes_per_miner_round,
            "dense_fp32_bytes": self.dense_fp32_bytes,
            "compression_ratio": self.dense_fp32_bytes / self.wire_bytes_per_miner_round,
            "params_identical": self.params_identical,
            "param_digests": self.digests,
            "seconds": sum(r.seconds for r in self.rounds),
            "config": cfg,
        }


@dataclass
class SimMiner:
    uid: int
    identity: Identity
    engine: LocalEngine
    arrival: random.Random
    outer: OuterOptimizer | None = None  # set when `SimConfig.outer` replaced the engine's


def _identity_for(seed: int, uid: int) -> Identity:
    # deterministic test keys: a simulation is reproducible, never a real network
    return Identity.from_secret(hashlib.sha256(f"gradmesh-sim:{seed}:{uid}".encode()).digest())


class Swarm:
    """Holds the miners and runs rounds; `run_simulation` drives it."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.spec = spec = cfg.run_spec
        self.assets = RunAssets(spec)
        self.params = param_count(self.assets.model_config)
        self.miners = [self._miner(uid) for uid in range(cfg.miners)]
        self.manifest: Manifest = self.miners[0].engine.manifest
        self.codec = self.miners[0].engine.codec
        self.board = MemoryBoard()
        self.sequence = 0  # envelopes' window field: one per exchange
        self.waiting: int | None = None  # overlap: the exchange not yet applied

    def _miner(self, uid: int) -> SimMiner:
        miner = SimMiner(uid=uid, identity=_identity_for(self.spec.seed, uid),
                         engine=self.assets.engine(config=self.cfg.engine),
                         arrival=random.Random(self.spec.seed * 1000 + uid))
        if self.cfg.outer is not None:
            miner.outer = self.cfg.outer(miner.engine.spec.outer, miner.engine.manifest, uid)
            miner.engine.replace_outer(miner.outer)
        return miner

    def heldout_loss(self) -> float:
        return self.miners[0].engine.evaluate(self.assets.eval_batches)

    def _batch(self, miner: SimMiner, window: int, step: int) -> torch.Tensor:
        return self.assets.batch(window, miner.uid, step)

    def _exchange(self) -> int:
        """Every miner publishes its pending local result; every miner gathers and applies
        the same outer step as the daemons (`select`, then `Engine.apply`)."""
        seq, sent = self._publish()
        self._apply(seq)
        return sent

    def _publish(self) -> tuple[int, int]:
        """Every miner seals and publishes its pending local result: (sequence, bytes)."""
        seq = self.sequence
        self.sequence += 1
        sent = 0
        for miner in self.miners:
            wire = seal(miner.identity, run_id=self.spec.run, window=seq,
                        base=BaseModel(step=seq, digest=miner.engine.digest()),
                        codec=self.codec, manifest=self.manifest, payload=miner.engine.encode())
            self.board.publish(seq, miner.identity.address, wire)
            sent += len(wire)
        return seq, sent

    def _apply(self, seq: int) -> None:
        expect = Expectation(self.spec.run, seq, self.codec, self.manifest)
        for miner in self.miners:
            decode = miner.outer.decode if miner.outer is not None else None
            chosen, skipped = select(self.board.collect(seq, miner.arrival), expect, None,
                                     decode=decode)
            if skipped:
                raise SimulationError(f"exchange {seq}: {skipped[0].reason}")
            miner.engine.apply(chosen)
        self.board.forget(seq)

    def run_round(self, window: int) -> tuple[float, float]:
        """One window; returns (mean inner train loss, wire bytes per miner)."""
        losses: list[float] = []
        sent = 0
        if self.miners[0].engine.per_step:
            for step in range(self.spec.inner_steps):
                for miner in self.miners:
                    losses.append(miner.engine.gradient(self._batch(miner, window, step)))
                sent += self._exchange()
        else:
            public = (self.assets.batch(window, PUBLIC_UID, 0)
                      if self.spec.inner_config().public_second_moment is not None else None)
            for miner in self.miners:
                batches = [self._batch(miner, window, s) for s in range(self.spec.inner_steps)]
                losses.extend(miner.engine.train(batches, self.spec.first_step(window), public))
            sent += self._windowed_exchange(last=window == self.cfg.rounds - 1)
        return float(np.mean(losses)), sent / len(self.miners)

    def _windowed_exchange(self, *, last: bool) -> int:
        """Synchronous: this window's aggregate now. Overlapped: the previous window's
        (this one's waits for the next window's training), and both after the last."""
        if not self.cfg.overlap:
            return self._exchange()
        seq, sent = self._publish()
        if self.waiting is not None:
            self._apply(self.waiting)
        self.waiting = seq
        if last:
            self._apply(seq)
            self.waiting = None
        return sent


def run_simulation(cfg: SimConfig,
                   on_round: Callable[[RoundRecord], None] | None = None) -> SimResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    swarm = Swarm(cfg)
    result = SimResult(config=cfg, params=swarm.params, initial_loss=swarm.heldout_loss())
    for window in range(cfg.rounds):
        started = time.perf_counter()
        train_loss, wire = swarm.run_round(window)
        record = RoundRecord(window=window, heldout_loss=swarm.heldout_loss(),
                             train_loss=train_loss, wire_bytes_per_miner=wire,
                             seconds=time.perf_counter() - started)
        result.rounds.append(record)
        if on_round:
            on_round(record)
    digests = [m.engine.digest().hex() for m in swarm.miners]
    result.digests = digests
    result.params_identical = len(set(digests)) == 1
    return result
