"""Pure, seeded scoring: LossScore, proof of assigned data, sync.

Every function here is (inputs, seed) -> numbers: no clock, no global RNG.
Two validators with the same θ_global, payloads, corpus and validator seed
compute bit-identical scores on the same hardware/thread count.

Reference values (Covenant-72B's Gauntlet) and what we use on `tiny`:
* the update is applied alone, scaled by outer_lr × lr_factor (reference 0.2),
  after rescaling each tensor to the window's median norm (the norm the
  aggregate clips to): a score then measures the update's direction, and a
  miner gains nothing by multiplying its update (issue: scaling stole weights);
* s = (L_before − L_after) / L_before on `own_steps` sampled steps of the
  miner's own assignment and on `rand_batches` batches nobody was assigned;
* proof of assigned data by replay (runs whose miners reset their inner
  optimizer every window, `ScoringConfig.inner`): the validator replays the
  miner's first `replay_steps` inner steps on its assigned batches from
  θ_global, and replays of every other evaluated miner's assignment and of one
  assignment nobody holds. `attribution` fits the update's sent values, at its
  positions, as a weighted sum of all those replays (least squares); the
  evidence e is the own assignment's share of the weights minus the largest
  other share, and b = +1 iff e ≥ `replay_threshold` (docs/validator.md has
  the measured ranges, also for a bf16 miner replayed in fp32);
* proof of assigned data by loss (runs that keep the inner optimizer state):
  on `tiny` early in training an update
  generalises almost perfectly, and which batch happens to be easier dominates
  s_own − s_rand (measured: honest miners got b = +1 in about half the windows,
  so the reference rule zeroed them). We therefore compare each miner's
  own/random gain *ratio* with that of a reference update (the clip-to-median
  mean of this window's positively scoring updates) on the same two batches:
  b = +1 iff s_own > 0, s_rand > 0 and s_own/s_rand > r_own/r_rand. Batch
  difficulty cancels out; what is left is "helped its own data more than a
  generic update does" (a weak signal on small models: docs/validator.md);
* either way BMA ← 0.95·BMA + 0.05·b. A miner earns nothing in its first
  `warmup_windows` scored windows; after that its score counts only while
  BMA > `bma_threshold` (`data_factor`, a gate: equal work, equal pay).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from node.engine.data import PUBLIC_UID, derive_seed, sample_offsets, window_batch
from node.engine.evaluator import Evaluator
from node.engine.inner import InnerConfig
from node.outer.aggregate import scale_values
from node.outer.step import values_at
from protocol.baseproof import base_proof, proof_positions
from protocol.envelope import BaseModel
from protocol.sparse import SparseTensor, decompress, sparse_norm
from protocol.spec import CodecSpec, Manifest
from validator.errors import ConfigError

RANDOM_UID = 2**32 + 7  # a uid no miner can hold: the "random batch" assignment


@dataclass(frozen=True)
class ScoringConfig:
    data_seed: int  # the run's data seed (what miners pass to window_batch)
    inner_steps: int  # H: steps a miner's assignment has per window
    batch_size: int
    seq_len: int
    own_steps: int = 6
    rand_batches: int = 6
    outer_lr: float = 1.0
    lr_factor: float = 0.2
    bma_decay: float = 0.95
    bma_threshold: float = 0.0  # the gate: BMA must be above it
    proof_of_data: bool = True  # whether the BMA scales (and gates) the score
    rank_tolerance: float = 0.25  # scores this close (× the median) share a rank
    warmup_windows: int = 3
    sync_max_lag: int = 2
    # the run's inner optimizer when it resets every window: the proof replays it
    inner: InnerConfig | None = None
    replay_steps: int | None = None  # inner steps replayed (None: all H)
    replay_threshold: float = 0.3  # evidence a replayed update must reach for b = +1
    # the share of the public second moment's weight a validator may lack (it missed the
    # run's earlier windows: a restart, a late join) before its replays may disprove
    public_settle_weight: float = 0.05

    def __post_init__(self) -> None:
        if self.replay_steps is not None and self.replay_steps < 1:
            raise ConfigError(f"replay_steps must be >= 1, got {self.replay_steps}")
        if not 0.0 < self.replay_threshold <= 1.0:
            raise ConfigError(f"replay_threshold must lie in (0, 1], got {self.replay_threshold}")
        if not 0.0 <= self.public_settle_weight < 1.0:
            raise ConfigError(
                f"public_settle_weight must lie in [0, 1), got {self.public_settle_weight}")

    @property
    def replays(self) -> bool:
        """Whether the proof of data is by replay (else by loss)."""
        return self.inner is not None and self.inner.reset_each_window


@dataclass(frozen=True)
class LossScore:
    own: float
    rand: float

    @property
    def combined(self) -> float:
        return 0.5 * (self.own + self.rand)


def own_batches(tokens: np.ndarray, cfg: ScoringConfig, validator_seed: int, window: int,
                uid: int) -> list[torch.Tensor]:
    """`own_steps` of the miner's assigned batches; which steps is seeded by the
    validator so a miner cannot train only on the ones that will be checked."""
    n = min(cfg.own_steps, cfg.inner_steps)
    picks = sample_offsets(derive_seed("val-own", validator_seed, window, uid), n,
                           cfg.inner_steps)
    return [window_batch(tokens, seed=cfg.data_seed, window=window, uid=uid, step=int(s),
                         batch_size=cfg.batch_size, seq_len=cfg.seq_len) for s in picks]


def random_batches(tokens: np.ndarray, cfg: ScoringConfig, validator_seed: int,
                   window: int) -> list[torch.Tensor]:
    seed = derive_seed("val-rand", validator_seed)
    return [window_batch(tokens, seed=seed, window=window, uid=RANDOM_UID, step=i,
                         batch_size=cfg.batch_size, seq_len=cfg.seq_len)
            for i in range(cfg.rand_batches)]


def public_batch(tokens: np.ndarray, cfg: ScoringConfig, window: int) -> torch.Tensor:
    """The window's public batch (the one every peer folds into the public second
    moment), as miners draw it."""
    return window_batch(tokens, seed=cfg.data_seed, window=window, uid=PUBLIC_UID, step=0,
                        batch_size=cfg.batch_size, seq_len=cfg.seq_len)


def assigned_batches(tokens: np.ndarray, cfg: ScoringConfig, window: int,
                     uid: int) -> list[torch.Tensor]:
    """The first `replay_steps` batches of `uid`'s assignment, in training order."""
    n = cfg.inner_steps if cfg.replay_steps is None else min(cfg.replay_steps, cfg.inner_steps)
    return [window_batch(tokens, seed=cfg.data_seed, window=window, uid=uid, step=s,
                         batch_size=cfg.batch_size, seq_len=cfg.seq_len) for s in range(n)]


def unassigned_batches(tokens: np.ndarray, cfg: ScoringConfig, validator_seed: int,
                       window: int) -> list[torch.Tensor]:
    """Batches of an assignment nobody holds, as many as a replay takes: the reference
    replay that is there even when a window has a single miner."""
    seed = derive_seed("val-replay", validator_seed)
    return [window_batch(tokens, seed=seed, window=window, uid=RANDOM_UID, step=s,
                         batch_size=cfg.batch_size, seq_len=cfg.seq_len)
            for s in range(len(assigned_batches(tokens, cfg, window, 0)))]


@dataclass(frozen=True)
class SentValues:
    """An update's nonzero positions (flat, per tensor) and its values there."""

    positions: list[torch.Tensor]
    values: list[torch.Tensor]


def sent_values(update: Sequence[SparseTensor], manifest: Manifest,
                codec: CodecSpec) -> SentValues:
    positions, values = [], []
    for st, spec in zip(update, manifest, strict=True):
        dense = decompress(st, tuple(spec.shape), codec).reshape(-1)
        idx = torch.nonzero(dense, as_tuple=True)[0]
        positions.append(idx)
        values.append(dense[idx].to(torch.float64))
    return SentValues(positions, values)


ATTRIBUTION_POSITIONS = 1 << 16  # sent positions the proof's regression keeps at most


def attribution_sample(sent: SentValues, seed: int,
                       limit: int = ATTRIBUTION_POSITIONS) -> SentValues:
    """At most `limit` of the sent positions, drawn by `seed` (the validator's, so a
    miner cannot know which are checked); all of them when there are no more."""
    sizes = [int(p.numel()) for p in sent.positions]
    total = sum(sizes)
    if total <= limit:
        return sent
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(total, generator=gen)[:limit].sort().values
    positions, values, start = [], [], 0
    for idx, vals, n in zip(sent.positions, sent.values, sizes, strict=True):
        local = chosen[(chosen >= start) & (chosen < start + n)] - start
        positions.append(idx[local])
        values.append(vals[local])
        start += n
    return SentValues(positions, values)


def at_positions(sent: SentValues, replay: Sequence[torch.Tensor]) -> torch.Tensor:
    """`replay` (a dense Δ per tensor) at the sent positions, flat, fp64, on the CPU."""
    return torch.cat([r.reshape(-1)[idx.to(r.device)].to("cpu", torch.float64)
                      for idx, r in zip(sent.positions, replay, strict=True)])


def attribution(sent: SentValues, columns: Sequence[torch.Tensor]) -> list[float]:
    """How much of the sent values each replay explains: the least-squares weights w
    of sent ≈ Σ_v w_v · replay_v at the sent positions (`columns`, from `at_positions`),
    each divided by Σ|w|. What every assignment's steps share from the same θ (and a
    shared second moment) is split among the replays; what sets a weight apart is what
    its assignment alone adds. All 0 when nothing is explained."""
    values = torch.cat(sent.values).to(torch.float64) if sent.values else torch.zeros(0)
    if not columns or values.numel() == 0:
        return [0.0] * len(columns)
    x = torch.nan_to_num(torch.stack([c.to(torch.float64) for c in columns], dim=1),
                         nan=0.0, posinf=0.0, neginf=0.0)
    y = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).unsqueeze(1)
    w = torch.linalg.lstsq(x, y, driver="gelsd").solution.reshape(-1)
    total = float(w.abs().sum())
    if not (math.isfinite(total) and total > 0.0):
        return [0.0] * len(columns)
    return [float(v) / total for v in w]


def replay_evidence(shares: Sequence[float], own: int) -> float:
    """The own assignment's share of the attribution minus the largest other share:
    about 1 when the update is its own assignment's steps, about 0 or below when it is
    another's (that one takes the weight) or nobody's; −1 without another replay to
    compare with."""
    others = [s for i, s in enumerate(shares) if i != own]
    if not others:
        return -1.0
    return shares[own] - max(others)


def replay_bit(evidence: float, cfg: ScoringConfig) -> float:
    """+1 when the replay evidence reaches `replay_threshold`."""
    return 1.0 if evidence >= cfg.replay_threshold else -1.0


def relative_gain(before: float, after: float) -> float:
    if not (math.isfinite(before) and math.isfinite(after)) or before <= 0.0:
        return -1.0
    return (before - after) / before


def at_norms(update: Sequence[SparseTensor], norms: Sequence[float]) -> list[SparseTensor]:
    """`update` rescaled tensor by tensor to `norms` (a zero or non-finite tensor is left
    as it is). Scored this way, LossScore judges an update's direction only: multiplying
    an update by any factor leaves its score unchanged, so scaling earns nothing."""
    out = []
    for st, target in zip(update, norms, strict=True):
        norm = sparse_norm(st)
        ok = math.isfinite(norm) and norm > 0.0 and math.isfinite(target)
        out.append(scale_values(st, target / norm) if ok else st)
    return out


def loss_score(ev: Evaluator, theta: Sequence[torch.Tensor], update: Sequence[SparseTensor],
               own: Sequence[torch.Tensor], own_before: float, rand: Sequence[torch.Tensor],
               rand_before: float, cfg: ScoringConfig,
               norms: Sequence[float] | None = None) -> LossScore:
    """LossScore of one update applied alone to θ_global; with `norms` (the window's
    median norm per tensor) the update is first rescaled to them (`at_norms`)."""
    if norms is not None:
        update = at_norms(update, norms)
    ev.load(theta, update, cfg.outer_lr * cfg.lr_factor)
    return LossScore(own=relative_gain(own_before, ev.loss(own)),
                     rand=relative_gain(rand_before, ev.loss(rand)))


def proof_bit(score: LossScore, ref: LossScore | None) -> float:
    """+1 when the update helped its own assigned data more than a generic update."""
    if not (score.own > 0.0 and score.rand > 0.0):
        return -1.0
    if ref is None or not (ref.own > 0.0 and ref.rand > 0.0):
        return 1.0 if score.own > score.rand else -1.0  # the plain reference rule
    return 1.0 if score.own / score.rand > ref.own / ref.rand else -1.0


def proof_step(bma: float, bit: float, decay: float = 0.95) -> float:
    """One step of the binary moving average of the proof bits."""
    return decay * bma + (1.0 - decay) * bit


def reference_score(ev: Evaluator, theta: Sequence[torch.Tensor],
                    reference: Sequence[torch.Tensor], own: Sequence[torch.Tensor],
                    own_before: float, rand: Sequence[torch.Tensor], rand_before: float,
                    cfg: ScoringConfig) -> LossScore:
    """Gains of a dense reference update on one miner's own batch and the random one."""
    ev.load_dense(theta, reference, cfg.outer_lr * cfg.lr_factor)
    return LossScore(own=relative_gain(own_before, ev.loss(own)),
                     rand=relative_gain(rand_before, ev.loss(rand)))


def data_factor(bma: float, windows_seen: int, cfg: ScoringConfig) -> float:
    """0 until the miner has been scored in `warmup_windows` windows (a new key earns
    nothing while its rating and BMA are unproven); then 1 while the BMA of its proof
    bits is above `bma_threshold` and 0 otherwise: a gate, so that miners doing equal
    work are paid alike, whatever their history's length. With `proof_of_data` off it
    is 1 after the warm-up."""
    if windows_seen < cfg.warmup_windows:
        return 0.0
    if not cfg.proof_of_data:
        return 1.0
    return 1.0 if bma > cfg.bma_threshold else 0.0


def base_proven(base: BaseModel, payload_hash: bytes, theta: Sequence[torch.Tensor],
                manifest: Manifest) -> bool:
    """Whether the contribution's base proof matches θ_global (`theta`): its author held
    the model it names when it sealed the payload (protocol/baseproof.py)."""
    positions = proof_positions(payload_hash, manifest)
    return base.proof == base_proof(payload_hash, values_at(theta, positions))


def sync_score(base: BaseModel, global_step: int, global_digest: bytes, max_lag: int = 2) -> float:
    """1.0 when built on the current global; 0.5^lag for a base `lag` steps old (up to
    `max_lag`); 0 for anything else (a future step, or the current step with a wrong
    digest: the miner diverged from θ_global). The scorer also asks `base_proven` of a
    current base: naming it without holding it earns 0."""
    if base.step == global_step:
        return 1.0 if base.digest == global_digest else 0.0
    lag = global_step - base.step
    if 0 < lag <= max_lag:
        return 0.5**lag
    return 0.0
