"""In-process swarm: N miners training one model over real signed envelopes.

Every miner owns its model copy, inner AdamW, outer optimizer state and key;
they exchange sealed envelopes through a `MemoryBoard`, each verifies and
decodes every peer's bytes itself, and each applies the outer step itself, so
`params_identical` at the end is a real check of deterministic aggregation.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from node.mesh.board import MemoryBoard
from node.engine.data import heldout_batches, stdlib_corpus, window_batch
from node.errors import ConfigError
from node.engine.inner import InnerConfig, InnerTrainer, evaluate
from node.engine.model import Decoder, build_model, get_config, model_manifest, param_count
from node.outer.optimizers import OPTIMIZERS, OptimizerName, OuterConfig, OuterOptimizer, make_outer
from node.engine.shards import load_shards
from node.outer.step import params_digest
from protocol.envelope import BaseModel, Expectation, open_envelope, seal
from protocol.identity import Identity
from protocol.spec import INDEX_CODINGS, IndexCoding, Manifest


@dataclass(frozen=True)
class SimConfig:
    miners: int = 4
    rounds: int = 10
    model: str = "tiny"
    optimizer: OptimizerName = "sparseloco"
    index_coding: IndexCoding = "fixed12"
    k: int = 64
    inner_steps: int = 30
    batch_size: int = 8
    seq_len: int = 128
    inner_lr: float = 1e-3
    warmup_steps: int = 20
    outer_lr: float | None = None
    seed: int = 0
    run_id: str = "sim"
    eval_batches: int = 8
    corpus_bytes: int | None = 16 * 2**20
    data_dir: Path | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.miners < 1 or self.rounds < 1 or self.inner_steps < 1:
            raise ConfigError("miners, rounds and inner_steps must be at least 1")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if self.index_coding not in INDEX_CODINGS:
            raise ConfigError(f"index coding {self.index_coding!r} not in {INDEX_CODINGS}")
        if self.batch_size < 1 or self.seq_len < 2 or self.eval_batches < 1:
            raise ConfigError("batch_size >= 1, seq_len >= 2, eval_batches >= 1")
        get_config(self.model)  # unknown names fail here, not mid-run


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
        cfg = asdict(self.config)
        cfg["data_dir"] = str(self.config.data_dir) if self.config.data_dir else None
        return {
            "optimizer": self.config.optimizer,
            "index_coding": self.config.index_coding,
            "model": self.config.model,
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
    model: Decoder
    trainer: InnerTrainer
    outer: OuterOptimizer
    arrival: random.Random


def param_digest(model: torch.nn.Module) -> bytes:
    return params_digest(list(model.parameters()))


def _identity_for(seed: int, uid: int) -> Identity:
    # deterministic test keys: a simulation is reproducible, never a real network
    return Identity.from_secret(hashlib.sha256(f"gradmesh-sim:{seed}:{uid}".encode()).digest())


class Swarm:
    """Holds the miners and runs rounds; `run_simulation` drives it."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        corpus = load_shards(cfg.data_dir) if cfg.data_dir else stdlib_corpus(cfg.corpus_bytes)
        self.train_tokens: np.ndarray = corpus.train
        model_cfg = get_config(cfg.model)
        self.seq_len = min(cfg.seq_len, model_cfg.max_seq_len)
        self.eval = heldout_batches(corpus.heldout, n_batches=cfg.eval_batches,
                                    batch_size=cfg.batch_size, seq_len=self.seq_len, seed=cfg.seed)
        total_steps = cfg.rounds * cfg.inner_steps
        # short runs (tests, smoke checks) warm up over at most the whole run
        inner = InnerConfig(lr=cfg.inner_lr, warmup_steps=min(cfg.warmup_steps, total_steps),
                            total_steps=total_steps)
        outer = OuterConfig(optimizer=cfg.optimizer, lr=cfg.outer_lr, k=cfg.k,
                            index_coding=cfg.index_coding)
        self.params = param_count(model_cfg)
        self.miners: list[SimMiner] = []
        for uid in range(cfg.miners):
            model = build_model(model_cfg, seed=cfg.seed)
            self.manifest: Manifest = model_manifest(model)
            self.miners.append(SimMiner(
                uid=uid, identity=_identity_for(cfg.seed, uid), model=model,
                trainer=InnerTrainer(model, inner), outer=make_outer(outer, self.manifest),
                arrival=random.Random(cfg.seed * 1000 + uid),
            ))  # fmt: skip
        self.codec = self.miners[0].outer.codec
        self.board = MemoryBoard()
        self.sequence = 0  # envelopes' window field: one per exchange

    def heldout_loss(self) -> float:
        return evaluate(self.miners[0].model, self.eval)

    def _batch(self, miner: SimMiner, window: int, step: int) -> torch.Tensor:
        return window_batch(self.train_tokens, seed=self.cfg.seed, window=window, uid=miner.uid,
                            step=step, batch_size=self.cfg.batch_size, seq_len=self.seq_len)

    def _exchange(self, locals_: Sequence[Sequence[torch.Tensor]]) -> int:
        """Every miner publishes its local result; every miner gathers and applies."""
        seq = self.sequence
        self.sequence += 1
        sent = 0
        for miner, local in zip(self.miners, locals_, strict=True):
            payload = miner.outer.encode(local)
            wire = seal(miner.identity, run_id=self.cfg.run_id, window=seq,
                        base=BaseModel(step=seq, digest=param_digest(miner.model)),
                        codec=self.codec, manifest=self.manifest, payload=payload)
            self.board.publish(seq, miner.identity.address, wire)
            sent += len(wire)
        expect = Expectation(self.cfg.run_id, seq, self.codec, self.manifest)
        for miner in self.miners:
            contributions = []
            for data in self.board.collect(seq, miner.arrival):
                envelope = open_envelope(data, expect)
                contributions.append((envelope.signer, miner.outer.decode(envelope.payload)))
            miner.outer.apply(list(miner.model.parameters()), miner.trainer, contributions)
        self.board.forget(seq)
        return sent

    def run_round(self, window: int) -> tuple[float, float]:
        """One window; returns (mean inner train loss, wire bytes per miner)."""
        losses: list[float] = []
        sent = 0
        if self.miners[0].outer.per_step:
            for step in range(self.cfg.inner_steps):
                grads = []
                for miner in self.miners:
                    loss, g = miner.trainer.compute_grads(self._batch(miner, window, step))
                    losses.append(loss)
                    grads.append(g)
                sent += self._exchange(grads)
        else:
            deltas = []
            for miner in self.miners:
                batches = [self._batch(miner, window, s) for s in range(self.cfg.inner_steps)]
                result = miner.trainer.run(batches)
                losses.extend(result.losses)
                deltas.append(result.delta)
            sent += self._exchange(deltas)
        return float(np.mean(losses)), sent / len(self.miners)


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
    digests = [param_digest(m.model).hex() for m in swarm.miners]
    result.digests = digests
    result.params_identical = len(set(digests)) == 1
    return result
