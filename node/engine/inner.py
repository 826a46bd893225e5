"""Inner optimisation loop of DiLoCo/SparseLoCo.

Each window a miner takes H AdamW steps from the shared parameters θ_start and
reports the pseudo-gradient Δ = θ_start − θ_after. The model is put back to
θ_start afterwards: only the outer step (applied identically by every peer) may
move the shared parameters.

AdamW state either persists across windows (`reset_each_window=False`) or starts
fresh every window with the learning rate of the window's own step numbers
(`run(batches, first_step=window × H)`): then a window's Δ depends only on
θ_global and the window's batches, so a validator can replay it (the proof of
assigned data, validator/scoring.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from node.engine.config import EngineConfig, micro_batches
from node.engine.device import autocast
from node.engine.model import Decoder
from node.errors import ConfigError, DataError

ResetScope = Literal["all", "first_moment"]
SEEDED_STEP = 10_000  # the step count a seeded second moment is given (see restart)


@dataclass(frozen=True)
class InnerConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 20
    total_steps: int = 1000
    min_lr_ratio: float = 0.1
    eps: float = 1e-8  # AdamW's ε (torch's default); larger damps the sign-like first steps
    reset_each_window: bool = False  # fresh AdamW state, lr from the window's step numbers
    # Study only (benchmarks/optimizer_study.py; the run spec cannot set it, and a validator
    # cannot replay it): "first_moment" forgets only AdamW's first moment at each reset and
    # carries the second, to tell which of the two a reset costs.
    reset_scope: ResetScope = "all"
    # With reset_each_window, AdamW's second moment starts each window from a public
    # estimate instead of from nothing (`PublicMoment`, this is its decay; the run spec's
    # `public_second_moment`). Every peer that sees the same θ and public batches holds
    # the same one, so a validator can still replay a miner's window.
    public_second_moment: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"inner lr must be positive, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"inner betas must lie in [0, 1), got {self.betas}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ConfigError(f"grad_clip must be positive, got {self.grad_clip}")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ConfigError("warmup_steps must be >= 0 and total_steps >= 1")
        if self.total_steps < self.warmup_steps:
            raise ConfigError(f"total_steps {self.total_steps} < warmup_steps "
                              f"{self.warmup_steps}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"inner eps must be positive, got {self.eps}")
        if self.reset_scope not in ("all", "first_moment"):
            raise ConfigError(f"reset_scope must be 'all' or 'first_moment', got "
                              f"{self.reset_scope!r}")
        if self.public_second_moment is not None and not (
                self.reset_each_window and 0.0 <= self.public_second_moment < 1.0):
            raise ConfigError("public_second_moment needs reset_each_window and a decay in "
                              f"[0, 1), got {self.public_second_moment}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


def lr_at(step: int, cfg: InnerConfig) -> float:
    """Linear warmup to cfg.lr, cosine decay to min_lr_ratio·lr at total_steps, then flat."""
    if step < cfg.warmup_steps:
        # step + 1 so the very first step already moves the weights.
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = cfg.total_steps - cfg.warmup_steps
    progress = 1.0 if span == 0 else min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def row_partials(g: Tensor) -> Tensor:
    """fp64 sums of squares of every row (dim 0) of `g`; a 1-D tensor's elements are its
    rows. A row never straddles an FSDP shard (they split dim 0), so a sharded engine
    computes the same numbers on its shards and gathers them."""
    x = g.detach().to(torch.float64)
    x = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(-1, 1)
    return (x * x).sum(dim=1)


def all_row_partials(grads: Sequence[Tensor]) -> Tensor:
    """Every row partial of every gradient, one flat fp64 tensor."""
    return torch.cat([row_partials(g).reshape(-1) for g in grads])


def exact_norm(grads: Sequence[Tensor],
               partials: Callable[[Sequence[Tensor]], Tensor] = all_row_partials) -> float:
    """The global L2 norm from the rows' fp64 partial sums, added exactly (math.fsum, so
    their order does not matter): the same number for any layout of the same gradients,
    so every rank and a single process clip alike."""
    return math.sqrt(math.fsum(partials(grads).tolist()))


@dataclass
class PublicMoment:
    """A second-moment estimate every peer can compute: an EMA with `decay`, over windows,
    of the squared clipped gradient of each window's public batch (the batch no miner is
    assigned, node/engine/data.py `PUBLIC_UID`) at the θ that window trains from. Whoever
    folded the same batches at the same θ holds the same tensors; a node that missed
    windows holds a close one (each missed window weighs `decay`^age). A fold may carry
    a tag, its window's first step: a window already folded is not folded again."""

    decay: float
    sq: list[Tensor] | None = None
    windows: int = 0
    last: int | None = None  # the tag of the newest tagged fold

    def folded(self, tag: int | None) -> bool:
        """Whether the window tagged `tag` (or a later one) was folded already."""
        return tag is not None and self.last is not None and tag <= self.last

    def fold(self, grads: Sequence[Tensor], coef: float, tag: int | None = None) -> None:
        """Fold one window's gradients, clipped by `coef`."""
        if self.sq is None:
            self.sq = [torch.zeros_like(g) for g in grads]
        with torch.no_grad():
            for acc, g in zip(self.sq, grads, strict=True):
                acc.mul_(self.decay).addcmul_(g, g, value=(1.0 - self.decay) * coef * coef)
        self.windows += 1
        self.last = tag if tag is not None else self.last

    def estimate(self) -> list[Tensor] | None:
        """The bias-corrected EMA (None before the first fold)."""
        if self.sq is None:
            return None
        unbias = 1.0 - self.decay ** self.windows
        return [acc / unbias for acc in self.sq]

    def state(self, whole: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """What a restart keeps, as fp32 CPU copies keyed `public.*` (nothing before the
        first fold): each EMA made whole by `whole` (a sharded engine gathers its shards),
        the decay, the number of windows folded and the newest tag."""
        if self.sq is None:
            return {}
        out = {f"public.{i}": whole(acc).to("cpu", torch.float32, copy=True)
               for i, acc in enumerate(self.sq)}
        # counts as fp32 too, as checkpoint stores keep local state (exact below 2^24)
        out["public.decay"] = torch.tensor(self.decay, dtype=torch.float32)
        out["public.windows"] = torch.tensor(float(self.windows))
        out["public.last"] = torch.tensor(-1.0 if self.last is None else float(self.last))
        return out

    def load_state(self, state: Mapping[str, Tensor], params: Sequence[Tensor],
                   place: Callable[[Tensor, Tensor], Tensor]) -> None:
        """Take what `state` returned if it fits: the same decay and one entry per tensor
        of `params` in its (whole) shape, laid out like it by `place(param, saved)`.
        Anything else (another decay, a missing or misshaped entry) leaves it as it is."""
        decay, windows = state.get("public.decay"), state.get("public.windows")
        saved = [state.get(f"public.{i}") for i in range(len(params))]
        ours = torch.tensor(self.decay, dtype=torch.float32)
        if decay is None or windows is None or not torch.equal(decay.float(), ours):
            return
        if any(t is None or t.shape != p.shape for t, p in zip(saved, params, strict=True)):
            return
        self.sq = [place(p, t) for p, t in zip(params, saved, strict=True) if t is not None]
        self.windows = int(windows)
        last = int(state.get("public.last", torch.tensor(-1.0)))
        self.last = last if last >= 0 else None

    def clear(self) -> None:
        """Forget every fold (θ was replaced by one with another history)."""
        self.sq, self.windows, self.last = None, 0, None


@dataclass
class InnerResult:
    delta: list[Tensor]
    losses: list[float]
    steps: int


class InnerTrainer:
    """AdamW inner optimiser with a global step counter that spans windows."""

    def __init__(self, model: Decoder, cfg: InnerConfig,
                 engine: EngineConfig | None = None, public: PublicMoment | None = None
                 ) -> None:
        self.model = model
        self.cfg = cfg
        self.engine = engine or EngineConfig()
        self.partials = all_row_partials  # a sharded engine gathers its ranks' partials
        self.params = list(model.parameters())
        self.step = 0
        self.window_first = 0  # the step the last reset started from
        # the public second moment (shared with the caller when given: a validator's
        # replays all start from the one it folds once per window)
        self.public = public if public is not None or cfg.public_second_moment is None \
            else PublicMoment(cfg.public_second_moment)
        self.skipped_steps = 0
        # Norm weights (1-D) are not decayed: shrinking them only fights the normalisation.
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=lr_at(0, cfg), betas=cfg.betas, eps=cfg.eps, fused=False,
        )

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def compute_grads(self, batch: Tensor) -> tuple[float, list[Tensor]]:
        """Loss and gradients of one batch, accumulated over micro-batches (each weighed
        by its share of the rows: one micro-batch is the plain batch, bit for bit), under
        the engine's autocast; the model is left without .grad."""
        self.model.zero_grad(set_to_none=True)
        batch = batch.to(self.device)
        rows = batch.shape[0]
        total = 0.0
        for start, stop in micro_batches(rows, self.engine.micro_batch):
            with autocast(self.device, self.engine):
                loss = self.model.loss(batch[start:stop])
            part = loss if stop - start == rows else loss * ((stop - start) / rows)
            torch.autograd.backward(part)
            total += float(part.detach())
        grads = []
        for p in self.params:
            grads.append(p.grad if p.grad is not None else torch.zeros_like(p))
            p.grad = None  # hand the tensor over instead of copying it
        return total, grads

    def apply_grads(self, grads: Sequence[Tensor]) -> None:
        """Clip to grad_clip, then one AdamW step at lr_at(step)."""
        if len(grads) != len(self.params):
            raise DataError(f"got {len(grads)} gradients for {len(self.params)} parameters")
        for p, g in zip(self.params, grads, strict=True):
            if g.shape != p.shape:
                raise DataError(f"gradient shape {tuple(g.shape)} != parameter {tuple(p.shape)}")
            p.grad = g.to(device=p.device, dtype=p.dtype)
        coef = self._clip_coefficient([p.grad for p in self.params if p.grad is not None])
        if math.isfinite(coef):
            if coef < 1.0:
                for p in self.params:
                    if p.grad is not None:
                        p.grad.mul_(coef)
            lr = lr_at(self.step, self.cfg) * self._first_moment_correction()
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        else:
            # A non-finite gradient would poison the weights and the Adam moments for good.
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _clip_coefficient(self, grads: Sequence[Tensor]) -> float:
        """What clipping to grad_clip multiplies the gradients by (at most 1); NaN when
        their norm is not finite."""
        norm = exact_norm(grads, self.partials)
        return min(1.0, self.cfg.grad_clip / (norm + 1e-6)) if math.isfinite(norm) else math.nan

    def observe_public(self, batch: Tensor, tag: int | None = None) -> None:
        """Fold the window's public batch, its clipped gradient at θ, into the public
        second moment (a batch whose gradient is not finite is left out), unless the
        window tagged `tag` (its first step) was folded already."""
        if self.public is None:
            raise ConfigError("this trainer keeps no public second moment")
        if self.public.folded(tag):
            return
        _, grads = self.compute_grads(batch)
        coef = self._clip_coefficient(grads)
        if math.isfinite(coef):
            self.public.fold(grads, coef, tag)

    def public_state(self, whole: Callable[[Tensor], Tensor] = lambda t: t
                     ) -> dict[str, Tensor]:
        """The public second moment as local state (`PublicMoment.state`; empty if none)."""
        return self.public.state(whole) if self.public is not None else {}

    def load_public_state(self, state: Mapping[str, Tensor],
                          place: Callable[[Tensor, Tensor], Tensor]) -> None:
        """Take back `public_state`'s entries of `state` (`PublicMoment.load_state`)."""
        if self.public is not None:
            self.public.load_state(state, self.params, place)

    def restart(self, first_step: int) -> None:
        """Forget the AdamW moments (only the first with reset_scope "first_moment"; the
        second starts from the public estimate when there is one) and count steps from
        `first_step`."""
        if first_step < 0:
            raise ConfigError(f"first_step must be >= 0, got {first_step}")
        estimate = None if self.public is None else self.public.estimate()
        if estimate is not None:
            self.optimizer.state.clear()
            for p, v in zip(self.params, estimate, strict=True):
                # counted as long-run, so torch's bias corrections are 1 (β2^SEEDED_STEP
                # underflows); _first_moment_correction restores the first moment's
                self.optimizer.state[p] = {"step": torch.tensor(float(SEEDED_STEP)),
                                           "exp_avg": torch.zeros_like(p),
                                           "exp_avg_sq": v.to(p.device)}
        elif self.cfg.reset_scope == "all":
            self.optimizer.state.clear()
        else:
            for state in self.optimizer.state.values():
                state["exp_avg"].zero_()
        self.step = self.window_first = first_step

    def _first_moment_correction(self) -> float:
        """With a carried or public second moment: the lr factor that turns torch's bias
        correction of the first moment (over all steps taken) into one over the window's own
        steps, as a fresh first moment needs; 1.0 otherwise."""
        carried = self.cfg.reset_scope != "all" or (self.public is not None
                                                    and self.public.sq is not None)
        if not carried or not self.optimizer.state:
            return 1.0
        beta1 = float(self.cfg.betas[0])
        taken = float(next(iter(self.optimizer.state.values()))["step"]) + 1
        in_window = self.step - self.window_first + 1
        return float((1.0 - beta1 ** taken) / (1.0 - beta1 ** in_window))

    def run(self, batches: Iterable[Tensor], first_step: int | None = None,
            public: Tensor | None = None) -> InnerResult:
        """Inner steps over `batches`; returns Δ = θ_start − θ_after and restores θ_start.
        With `reset_each_window`, the window starts fresh at `first_step` (required), and
        with a public second moment `public`, the window's public batch, is required."""
        if self.cfg.reset_each_window:
            if first_step is None:
                raise ConfigError("a trainer that resets each window needs first_step")
            if self.cfg.public_second_moment is not None:
                if public is None:
                    raise DataError("a public second moment needs the window's public batch")
                self.observe_public(public, first_step)
            self.restart(first_step)
        return self.steps(batches)

    def steps(self, batches: Iterable[Tensor]) -> InnerResult:
        """One AdamW step per batch from the current state; returns Δ = θ_start − θ_after
        and restores θ_start."""
        start = [p.detach().clone() for p in self.params]
        losses: list[float] = []
        for batch in batches:
            loss, grads = self.compute_grads(batch)
            self.apply_grads(grads)
            losses.append(loss)
        with torch.no_grad():
            delta = [(s - p).float() for s, p in zip(start, self.params, strict=True)]
            for s, p in zip(start, self.params, strict=True):
                p.copy_(s)
        return InnerResult(delta=delta, losses=losses, steps=len(losses))


def evaluate(model: Decoder, batches: Iterable[Tensor]) -> float:
    """Mean loss over `batches` without gradients; the train/eval mode is restored."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            losses = [float(model.loss(b.to(device))) for b in batches]
    finally:
        model.train(was_training)
    if not losses:
        raise DataError("evaluate needs at least one batch")
    return sum(losses) / len(losses)
