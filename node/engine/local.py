"""`LocalEngine`: θ in this process, on one device — the reference engine.

It holds the model, the inner AdamW trainer and the run's outer optimizer
(SparseLoCo, DiLoCo or the DDP baseline) and implements the `Engine` contract
(node/engine/base.py). The operator's `EngineConfig` (node/engine/config.py)
places it on a device and sets the inner loop's precision, micro-batches,
activation checkpointing and compilation; θ, the optimizer state and the error
feedback stay fp32, and the outer step is the same exact fp32 computation on
every device. Later engines (FSDP sharding) keep the same contract and pass the
same suite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from node.engine.config import EngineConfig
from node.engine.device import autocast, resolve_device
from node.engine.evaluator import Evaluator
from node.engine.hf import import_model
from node.engine.inner import InnerConfig, InnerTrainer, evaluate
from node.engine.model import ModelConfig, build_model, get_config, model_manifest
from node.engine.store import CheckpointStore, LocalCheckpoint, MetaValue
from node.errors import EngineError
from node.outer.aggregate import AggregateStats
from node.outer.optimizers import OuterConfig, OuterOptimizer, make_outer
from node.outer.step import Selected, params_digest, values_at
from protocol.spec import CodecSpec, Manifest


@dataclass(frozen=True)
class EngineSpec:
    """What an engine needs of the run (consensus): model, θ_init seed, both optimizers."""

    model: str = "tiny"
    seed: int = 0
    vocab_size: int | None = None  # None: the model config's own
    init_from: Path | None = None  # a Hugging Face Llama folder: θ_init (continued pre-training)
    inner: InnerConfig = field(default_factory=InnerConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)


def initial_params(spec: EngineSpec, config: ModelConfig) -> list[Tensor]:
    """θ_init: the Hugging Face folder's weights when the run starts from one, else the
    seed's model (identical on every node either way)."""
    if spec.init_from is not None:
        return import_model(spec.init_from, config)
    return [p.detach() for p in build_model(config, seed=spec.seed).parameters()]


class LocalEngine:
    """The single-process `Engine`."""

    def __init__(self, spec: EngineSpec, store: CheckpointStore | None = None,
                 config: EngineConfig | None = None) -> None:
        self.spec = spec
        self.config = config or EngineConfig()
        self.device = resolve_device(self.config.device)
        self.model_config = get_config(spec.model, spec.vocab_size)
        self._model = build_model(self.model_config, seed=spec.seed, device=self.device)
        self._model.checkpoint_blocks = self.config.activation_checkpointing
        if self.config.compile:
            for layer in self._model.layers:
                layer.compile()  # in place: parameter names (the manifest) stay the same
        self._params = list(self._model.parameters())
        self._manifest = model_manifest(self._model)
        self._trainer = InnerTrainer(self._model, spec.inner, self.config)
        if spec.init_from is not None:
            self.load_params(initial_params(spec, self.model_config))
        state_device = "cpu" if self.config.offload_error_feedback else self.device
        self._outer = make_outer(spec.outer, self._manifest, state_device=state_device)
        self._store = store
        self._pending: list[Tensor] | None = None
        self._digest: bytes | None = None

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def codec(self) -> CodecSpec:
        return self._outer.codec

    @property
    def per_step(self) -> bool:
        return self._outer.per_step

    def replace_outer(self, outer: OuterOptimizer) -> None:
        """Use `outer` instead of the run's outer optimizer (same manifest; before the
        first window). Studies only: the simulator's `SimConfig.outer`."""
        self._outer = outer

    # --- training and the outer step ----------------------------------------------------
    def train(self, batches: Sequence[Tensor], first_step: int | None = None,
              public: Tensor | None = None) -> list[float]:
        result = self._trainer.run(batches, first_step, public)
        self._pending = result.delta
        return result.losses

    def gradient(self, batch: Tensor) -> float:
        loss, grads = self._trainer.compute_grads(batch)
        self._pending = grads
        return loss

    def encode(self) -> bytes:
        if self._pending is None:
            raise EngineError("nothing trained since the last encode")
        local, self._pending = self._pending, None
        return self._outer.encode(local)

    def apply(self, chosen: Sequence[Selected]) -> AggregateStats:
        if not chosen:
            return AggregateStats(peers=0, clipped=0, skipped=0)
        contributions = [(c.signer, c.tensors) for c in chosen]
        stats = self._outer.apply(self._params, contributions, self._trainer.apply_grads)
        self._digest = None
        return stats

    def digest(self) -> bytes:
        if self._digest is None:
            self._digest = params_digest(self._params)
        return self._digest

    def evaluate(self, batches: Sequence[Tensor]) -> float:
        with autocast(self.device, self.config):  # the evaluator's precision too
            return evaluate(self._model, batches)

    # --- θ in and out -------------------------------------------------------------------
    def sample(self, positions: Sequence[tuple[int, int]]) -> list[float]:
        return values_at(self._params, positions)

    def full_params(self) -> list[Tensor]:
        return [p.detach().to("cpu", torch.float32).clone() for p in self._params]

    def load_params(self, params: Sequence[Tensor]) -> None:
        shapes = [tuple(t.shape) for t in params]
        if shapes != [tuple(s.shape) for s in self._manifest]:
            raise EngineError(f"{len(shapes)} tensors do not fit the model's manifest")
        with torch.no_grad():
            for p, q in zip(self._params, params, strict=True):
                p.copy_(q)
        self._digest = None
        if self._trainer.public is not None:
            self._trainer.public.clear()  # folded along another θ's history

    def reset(self) -> None:
        self.load_params(initial_params(self.spec, self.model_config))

    # --- what only this node has ---------------------------------------------------------
    def local_state(self) -> dict[str, Tensor]:
        return {**self._outer.local_state(), **self._trainer.public_state()}

    def load_local_state(self, state: Mapping[str, Tensor]) -> None:
        self._outer.load_local_state(state)
        self._trainer.load_public_state(state, lambda p, t: t.to(p.device, p.dtype))

    def fold_public(self, batch: Tensor, first_step: int) -> None:
        if self._trainer.public is None:
            raise EngineError("this run keeps no public second moment")
        self._trainer.observe_public(batch, first_step)

    def save_local(self, window: int, meta: Mapping[str, MetaValue]) -> None:
        self.write_local(window, self.full_params(), self.local_state(), meta)

    def write_local(self, window: int, params: Sequence[Tensor], state: Mapping[str, Tensor],
                    meta: Mapping[str, MetaValue]) -> None:
        if self._store is None:
            raise EngineError("this engine has no checkpoint store")
        self._store.save(window, params, state, meta)

    def latest_local(self) -> LocalCheckpoint | None:
        return self._store.latest() if self._store is not None else None

    def restore_local(self, checkpoint: LocalCheckpoint) -> None:
        self.load_params(checkpoint.params)
        self.load_local_state(checkpoint.extra)

    def evaluator(self) -> Evaluator:
        scratch = build_model(self.model_config, seed=self.spec.seed, device=self.device)
        # the engine's public second moment: a validator's scoring folds into the one that
        # its local checkpoint keeps and its catch-up folds (node/runtime/catchup.py)
        return Evaluator(scratch, self._manifest, self.codec, self.config,
                         public=self._trainer.public)
