"""What every node of one run must agree on, and the objects built from it.

Two nodes with different `RunSpec`s compute different θ from the same
envelopes, so operators pass the same values (the CLI's run flags); the
envelope binds the run id, codec and model manifest, so a mismatch shows up
as rejected envelopes rather than silent divergence.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from node.engine.config import EngineConfig
from node.engine.data import Corpus, heldout_batches, stdlib_corpus, window_batch
from node.engine.inner import InnerConfig
from node.engine.local import EngineSpec, LocalEngine
from node.engine.model import get_config, parameter_shapes
from node.engine.shards import load_shards
from node.engine.store import CheckpointStore
from node.errors import ConfigError
from node.outer.optimizers import OptimizerName, OuterConfig
from protocol.envelope import Expectation, limits_for
from protocol.limits import Limits
from protocol.spec import INDEX_CODINGS, CodecSpec, Manifest, TensorSpec, manifest_digest


@dataclass(frozen=True)
class RunSpec:
    run: str = "devnet"
    model: str = "tiny"
    seed: int = 0  # model init and data assignment
    inner_steps: int = 12  # H
    batch_size: int = 8
    seq_len: int = 128
    inner_lr: float = 2e-3
    warmup_steps: int = 24
    total_steps: int = 10_000  # inner cosine schedule length (global steps)
    k: int = 64
    index_coding: str = "gap"  # gap-coded positions: ~210× on the wire vs ~146× fixed12
    optimizer: OptimizerName = "sparseloco"  # the daemons run SparseLoCo; the simulator all
    outer_lr: float | None = None  # None: the optimizer's default (SparseLoCo 1.0, DiLoCo 0.7)
    eval_batches: int = 4
    score_warmup: int = 3  # windows a miner is scored before its score earns anything
    proof_of_data: bool = True  # whether the proof of assigned data gates validators' scores
    # fresh inner AdamW state every window (lr from the window's step numbers): a window's
    # Δ is then a function of θ_global and its batches, which validators replay to prove
    # the assigned data was trained on (docs/validator.md); False keeps the state
    inner_reset: bool = True
    # with inner_reset: AdamW's second moment starts each window from a public estimate
    # (an EMA with this decay of the squared gradient of each window's public batch at θ,
    # node/engine/inner.py `PublicMoment`) instead of from nothing; None: from nothing.
    # Validators fold the same public batches and replay it exactly (docs/validator.md)
    public_second_moment: float | None = None
    # two-phase publication: miners commit to their envelope's sha256 on the chain in this
    # share of each window and release it after; 0 = publish at once, nothing committed
    commit_phase: float = 0.5
    # communication behind compute: a window's finish applies the window before it, so
    # miners train w + 1 while w's contributions still travel; w then trains from θ after
    # ≤ w − 2 (a one-window-delayed outer step, docs/mesh.md "Overlap")
    overlap: bool = False
    corpus_bytes: int | None = 4 * 2**20  # of the stdlib corpus without shards (None: all)
    data: Path | None = None  # prepared shards (gradmesh data prepare)
    vocab_size: int | None = None  # the model's vocabulary (None: the tokenizer's, padded)
    tokenizer_sha256: str | None = None  # when set, the data must be tokenized by exactly this
    data_sha256: str | None = None  # when set, the shard manifest must hash to exactly this
    init_from: Path | None = None  # a Hugging Face Llama folder to start from (local path)
    init_sha256: str | None = None  # when set, θ_init from `init_from` must digest to this

    def __post_init__(self) -> None:
        get_config(self.model)
        if not self.run or len(self.run) > 64 or "/" in self.run:
            raise ConfigError("run id: 1-64 characters, no '/'")
        if self.inner_steps < 1 or self.batch_size < 1 or self.seq_len < 2:
            raise ConfigError("inner_steps >= 1, batch_size >= 1, seq_len >= 2")
        if self.index_coding not in INDEX_CODINGS:
            raise ConfigError(f"index coding {self.index_coding!r} not in {INDEX_CODINGS}")
        if self.eval_batches < 1:
            raise ConfigError("eval_batches >= 1")
        if self.score_warmup < 0:
            raise ConfigError("score_warmup >= 0")
        if not 0.0 <= self.commit_phase < 1.0:
            raise ConfigError("commit_phase in [0, 1): 0 publishes without commitments")
        if not self.inner_lr > 0:
            raise ConfigError("learning rates must be positive")
        self.outer_config()  # optimizer name, outer lr
        self.inner_config()  # a public second moment needs the reset and a decay in [0, 1)

    def outer_config(self) -> OuterConfig:
        return OuterConfig(optimizer=self.optimizer, lr=self.outer_lr, k=self.k,
                           index_coding=self.index_coding)  # type: ignore[arg-type]

    @property
    def codec(self) -> CodecSpec:
        return self.outer_config().codec

    @property
    def effective_outer_lr(self) -> float:
        return self.outer_config().effective_lr

    def inner_config(self) -> InnerConfig:
        return InnerConfig(lr=self.inner_lr, warmup_steps=self.warmup_steps,
                           total_steps=max(self.total_steps, self.warmup_steps),
                           reset_each_window=self.inner_reset,
                           public_second_moment=self.public_second_moment)

    @property
    def lag(self) -> int:
        """Windows between training a window and applying it: 0, or 1 with `overlap`."""
        return 1 if self.overlap else 0

    def first_step(self, window: int) -> int:
        """The number of `window`'s first inner step: window × H."""
        return window * self.inner_steps

    def engine_spec(self) -> EngineSpec:
        """The engine's share of the run: model, seed, inner and outer optimizer."""
        return EngineSpec(model=self.model, seed=self.seed, vocab_size=self.vocab_size,
                          init_from=self.init_from, inner=self.inner_config(),
                          outer=self.outer_config())


class RunMismatchError(ConfigError):
    """This node's tokenizer, data or model does not match the run spec; the message
    names what differs."""


def check_corpus(spec: RunSpec, corpus: Corpus, vocab_size: int) -> None:
    """Refuse data the run does not train on: another tokenizer, other shards, or token
    ids the model's vocabulary cannot hold."""
    if spec.tokenizer_sha256 and corpus.tokenizer_sha256 != spec.tokenizer_sha256:
        raise RunMismatchError(f"tokenizer differs from the run spec: data {corpus.source} "
                               f"has {corpus.tokenizer_sha256}, run {spec.run!r} expects "
                               f"{spec.tokenizer_sha256}")
    if spec.data_sha256 and corpus.manifest_sha256 != spec.data_sha256:
        raise RunMismatchError(f"data differs from the run spec: {corpus.source} has manifest "
                               f"{corpus.manifest_sha256}, run {spec.run!r} expects "
                               f"{spec.data_sha256}")
    if corpus.vocab_size > vocab_size:
        raise RunMismatchError(f"the tokenizer of {corpus.source} has {corpus.vocab_size} ids "
                               f"but model {spec.model!r} only {vocab_size} (set vocab_size)")


def check_init(spec: RunSpec, digest: bytes) -> None:
    """Refuse a starting point (--init-from) other than the one the run spec pins."""
    if spec.init_from is None:
        if spec.init_sha256:
            raise RunMismatchError(f"run {spec.run!r} starts from weights with θ digest "
                                   f"{spec.init_sha256}: give --init-from DIR")
        return
    if spec.init_sha256 and digest.hex() != spec.init_sha256:
        raise RunMismatchError(f"the weights in {spec.init_from} (θ digest {digest.hex()}) "
                               f"are not the run's starting point ({spec.init_sha256})")


VOCAB_MULTIPLE = 128  # embedding rows padded for efficient matmuls (and sharding)


def padded_vocab(tokenizer_vocab: int) -> int:
    """The model vocabulary for a tokenizer of `tokenizer_vocab` ids: the next multiple
    of 128 (ids beyond the tokenizer's are never produced)."""
    return -(-tokenizer_vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


class RunAssets:
    """The model, data and expectations one node builds from a `RunSpec`."""

    def __init__(self, spec: RunSpec) -> None:
        corpus: Corpus = load_shards(spec.data) if spec.data else stdlib_corpus(spec.corpus_bytes)
        if spec.vocab_size is None:  # the run's tokenizer decides the model's vocabulary
            spec = replace(spec, vocab_size=padded_vocab(corpus.vocab_size))
        self.spec = spec
        self.model_config = get_config(spec.model, spec.vocab_size)
        check_corpus(spec, corpus, self.model_config.vocab_size)
        self.train_tokens: np.ndarray = corpus.train
        self.heldout_tokens: np.ndarray = corpus.heldout
        self.seq_len = min(spec.seq_len, self.model_config.max_seq_len)
        self.eval_batches = heldout_batches(corpus.heldout, n_batches=spec.eval_batches,
                                            batch_size=spec.batch_size, seq_len=self.seq_len,
                                            seed=spec.seed)

    def engine(self, checkpoints: Path | None = None,
               config: EngineConfig | None = None) -> LocalEngine:
        """A fresh engine at θ_init (identical on every node), keeping local checkpoints
        in `checkpoints` when given, computing as the operator's `config` says."""
        store = CheckpointStore(checkpoints) if checkpoints is not None else None
        engine = LocalEngine(self.spec.engine_spec(), store, config)
        if self.spec.init_from is not None or self.spec.init_sha256:  # θ is hashed only then
            check_init(self.spec, engine.digest())
        return engine

    @cached_property
    def limits(self) -> Limits:
        """The run's wire caps: envelopes no larger than the model's largest valid one."""
        manifest = tuple(TensorSpec(name, shape, "float32")
                         for name, shape in parameter_shapes(self.model_config))
        return limits_for(manifest, self.spec.codec)

    def manifest_digest(self, manifest: Manifest) -> bytes:
        return manifest_digest(manifest)

    def expectation(self, window: int, manifest: Manifest) -> Expectation:
        return Expectation(self.spec.run, window, self.spec.codec, manifest)

    def batch(self, window: int, uid: int, step: int) -> torch.Tensor:
        return window_batch(self.train_tokens, seed=self.spec.seed, window=window, uid=uid,
                            step=step, batch_size=self.spec.batch_size, seq_len=self.seq_len)
