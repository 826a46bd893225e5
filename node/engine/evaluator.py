"""A scratch model for scoring updates: θ_global minus one update, evaluated.

Validators apply each miner's update alone to a copy of θ_global and measure the
loss, and replay a miner's inner steps from θ_global (the proof of assigned
data); this is the only place that writes such a copy. It never touches the
engine's own θ.

On a GPU the work stays on the device: an update is moved there sparse (about
1/200 of its dense size) and scattered there, and θ_global, which the validator
hands over from the CPU once per window, is copied to the device once and reused
for every miner's evaluation (`DeviceCopy`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch

from node.engine.config import EngineConfig
from node.engine.device import autocast
from node.engine.inner import InnerConfig, InnerTrainer, PublicMoment
from node.engine.model import Decoder
from protocol.sparse import SparseTensor, decompress
from protocol.spec import CodecSpec, Manifest


def mean_loss(model: Decoder, batches: Sequence[torch.Tensor],
              config: EngineConfig | None = None) -> float:
    """Mean of the batches' losses, each the mean of its rows' fp32 losses, summed
    exactly (math.fsum) in order. Batches of one shape are evaluated together, in
    forwards of `config.micro_batch` rows (one batch per forward when unset: on a CPU
    small forwards are faster; a GPU wants `--micro-batch` of many batches' rows)."""
    config = config or EngineConfig()
    device = next(model.parameters()).device
    if len({tuple(b.shape) for b in batches}) != 1:
        return math.fsum(mean_loss(model, [b], config) for b in batches) / len(batches)
    rows = torch.cat(list(batches)).to(device)
    step = config.micro_batch or batches[0].shape[0]
    with torch.no_grad(), autocast(device, config):
        per_row = torch.cat([model.row_losses(rows[i:i + step])
                             for i in range(0, rows.shape[0], step)])
    per_batch = per_row.reshape(len(batches), -1).mean(dim=1)
    return math.fsum(per_batch.tolist()) / len(batches)


class DeviceCopy:
    """θ's copy on `device`, made once and reused while θ is the same tensors, unchanged.

    The key is each source tensor's storage address and version counter (bumped by
    every in-place write); the sources are held so no address is reused while cached."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sources: list[torch.Tensor] = []
        self._key: list[tuple[int, int]] = []
        self._copy: list[torch.Tensor] = []

    def of(self, theta: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        key = [(t.data_ptr(), t._version) for t in theta]
        if key != self._key:
            self._copy = []  # free the old copy before making the new one
            self._copy = [t.to(self.device, torch.float32, copy=True) for t in theta]
            self._sources, self._key = list(theta), key
        return self._copy


def on_device(st: SparseTensor, device: torch.device) -> SparseTensor:
    """The sparse tensor's parts moved to `device` (scattering there is exact)."""
    return SparseTensor(st.indices.to(device), st.codes.to(device), st.table.to(device))


class Evaluator:
    """Holds one scratch model; `load` puts θ − scale·update into it."""

    def __init__(self, model: Decoder, manifest: Manifest, spec: CodecSpec,
                 config: EngineConfig | None = None, public: PublicMoment | None = None
                 ) -> None:
        self.model = model.eval()
        self.config = config or EngineConfig()
        self.params = list(model.parameters())
        self.manifest = manifest
        self.spec = spec
        self.device = self.params[0].device
        self._theta = DeviceCopy(self.device)
        # the public second moment replays start from (runs that keep one): folded once
        # per proven window by `observe_public`, the one thing kept between windows (an
        # engine's evaluator shares the engine's, node/engine/local.py `evaluator`)
        self.public: PublicMoment | None = public

    def _base(self, theta: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """θ on the model's device: as given when it is there, else the cached copy."""
        if all(t.device == self.device for t in theta):
            return theta
        return self._theta.of(theta)

    def load(self, theta: Sequence[torch.Tensor], update: Sequence[SparseTensor] | None,
             scale: float) -> None:
        """θ, minus `scale` × the decompressed sparse `update` when one is given."""
        with torch.no_grad():
            for i, (p, t) in enumerate(zip(self.params, self._base(theta), strict=True)):
                p.copy_(t)
                if update is not None:
                    st = on_device(update[i], p.device)
                    dense = decompress(st, tuple(self.manifest[i].shape), self.spec)
                    p.sub_(dense.to(p.dtype), alpha=scale)

    def load_dense(self, theta: Sequence[torch.Tensor], update: Sequence[torch.Tensor],
                   scale: float) -> None:
        """θ − scale × a dense update (the validator's reference aggregate)."""
        with torch.no_grad():
            for p, t, u in zip(self.params, self._base(theta), update, strict=True):
                p.copy_(t).sub_(u.to(p.device, p.dtype), alpha=scale)

    def loss(self, batches: Sequence[torch.Tensor]) -> float:
        return mean_loss(self.model, batches, self.config)

    def replay(self, theta: Sequence[torch.Tensor], batches: Sequence[torch.Tensor],
               inner: InnerConfig, first_step: int) -> list[torch.Tensor]:
        """A miner's window replayed: AdamW steps from θ on `batches` with fresh state,
        numbered from `first_step`, as a miner of a run that resets its inner optimizer
        each window trains (the second moment from this evaluator's public one when the
        run keeps one); returns Δ = θ − θ_after (fp32, on the CPU)."""
        self.load(theta, None, 0.0)
        fresh = replace(inner, reset_each_window=True, reset_scope="all")
        public = self.public if fresh.public_second_moment is not None else None
        trainer = InnerTrainer(self.model, fresh, self.config, public=public)
        trainer.restart(first_step)
        return [d.cpu() for d in trainer.steps(batches).delta]

    def observe_public(self, theta: Sequence[torch.Tensor], batch: torch.Tensor,
                       inner: InnerConfig, tag: int | None = None) -> None:
        """Fold `batch`, a window's public batch, at θ into the public second moment that
        `replay` starts from; nothing when `inner` keeps none, or when the window tagged
        `tag` (its first step) was folded already."""
        if inner.public_second_moment is None:
            return
        if self.public is None or self.public.decay != inner.public_second_moment:
            self.public = PublicMoment(inner.public_second_moment)
        if self.public.folded(tag):
            return
        self.load(theta, None, 0.0)
        trainer = InnerTrainer(self.model, inner, self.config, public=self.public)
        trainer.observe_public(batch, tag)
