"""Proof of assigned data for one window: a bit, and its evidence, per evaluated update.

This module owns the two ways of deciding whether an update was trained on its
author's assigned batches (the rules and measured figures: validator/scoring.py
and docs/validator.md): by replaying each author's inner steps from θ_global
(`replay_proofs`, for runs whose miners reset their inner optimizer every
window) and by comparing loss gains with a leave-one-out reference update
(`loss_proofs`, for runs that keep it). It takes θ, the updates and the
validator's scratch `Evaluator` and returns numbers; it must never touch the
engine's own θ, read a clock or the chain, or keep anything between windows
beyond the public second moment the evaluator folds once per replayed window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from node.engine.data import derive_seed
from node.engine.evaluator import Evaluator
from node.outer.aggregate import aggregate_sparse
from protocol.sparse import SparseTensor
from protocol.spec import CodecSpec, Manifest
from validator import scoring
from validator.scoring import LossScore, ScoringConfig


@dataclass(frozen=True)
class Proof:
    bit: float  # +1 proven, −1 disproven, 0 neither
    evidence: float | None = None  # the replay evidence behind the bit


@dataclass(frozen=True)
class Update:
    """What the proof needs of one evaluated contribution."""

    signer: bytes
    base_step: int  # the θ step its header names
    tensors: Sequence[SparseTensor]


@dataclass(frozen=True)
class Window:
    """The window being scored: its number, θ_global at its start and that θ's step."""

    window: int
    theta: Sequence[torch.Tensor]
    step: int


@dataclass(frozen=True)
class LossBatches:
    """The loss proof's batches: each miner's own sample and the random one, with their
    losses under θ_global."""

    own: Mapping[int, list[torch.Tensor]]
    own_before: Mapping[int, float]
    rand: list[torch.Tensor]
    rand_before: float


def replay_proofs(ev: Evaluator, cfg: ScoringConfig, tokens: np.ndarray, seed: int,
                  at: Window, updates: Mapping[int, Update], codec: CodecSpec
                  ) -> dict[int, Proof]:
    """The assignment of every update built on θ_global, and one nobody holds (`seed`:
    the validator's), replayed from θ_global one at a time; each update's sent values
    attributed to those replays (scoring.attribution), its evidence its own replay's
    share against the largest other's. An update that names an older
    base cannot be replayed from θ_global: 0, neither proof nor disproof (its sync score
    already halves its score). In a run with a public second moment, the window's public
    batch is folded first, as every miner that trains the window folds it. While the
    validator's own estimate lacks more than `public_settle_weight` of the run's (it
    joined late or lost its state), its replays differ from honest miners' through its own
    doing: an update its replays still prove gets +1, any other 0, never −1."""
    assert cfg.inner is not None
    ev.observe_public(at.theta, scoring.public_batch(tokens, cfg, at.window), cfg.inner,
                      tag=at.window * cfg.inner_steps)
    settled = public_settled(ev, cfg, at.step + 1)
    proofs = {u: Proof(0.0) for u in updates}
    current = sorted(u for u, up in updates.items() if up.base_step == at.step)
    if not current:
        return proofs
    sent = {u: scoring.attribution_sample(
        scoring.sent_values(updates[u].tensors, ev.manifest, codec),
        derive_seed("val-attribution", seed, at.window, u)) for u in current}
    assignments = {u: scoring.assigned_batches(tokens, cfg, at.window, u) for u in current}
    assignments[scoring.RANDOM_UID] = scoring.unassigned_batches(tokens, cfg, seed, at.window)
    order = sorted(assignments)
    columns: dict[int, list[torch.Tensor]] = {u: [] for u in current}
    for v in order:  # one replay in memory at a time: only its values at sent positions stay
        replay = ev.replay(at.theta, assignments[v], cfg.inner, at.window * cfg.inner_steps)
        for u in current:
            columns[u].append(scoring.at_positions(sent[u], replay))
    for u in current:
        shares = scoring.attribution(sent[u], columns[u])
        evidence = scoring.replay_evidence(shares, order.index(u))
        bit = scoring.replay_bit(evidence, cfg)
        proofs[u] = Proof(bit if settled else max(bit, 0.0), evidence)
    return proofs


def public_settled(ev: Evaluator, cfg: ScoringConfig, run_windows: int) -> bool:
    """Whether the evaluator's public second moment (if the run keeps one) lacks at most
    `cfg.public_settle_weight` of the weight that an estimate folded over the run's
    `run_windows` windows so far gives the windows it missed (the oldest ones). The
    caller counts the run's windows by θ_global's outer steps plus the current one, so
    a validator started with the run's first step is settled from its first window."""
    public = ev.public
    if public is None:
        return True
    whole = 1.0 - public.decay ** run_windows
    missed = public.decay ** public.windows - public.decay ** run_windows
    return missed <= cfg.public_settle_weight * whole


def loss_proofs(ev: Evaluator, cfg: ScoringConfig, theta: Sequence[torch.Tensor],
                updates: Mapping[int, Update], scores: Mapping[int, LossScore],
                helpful: Sequence[int], batches: LossBatches, manifest: Manifest,
                codec: CodecSpec) -> dict[int, Proof]:
    """Each update's own/random gain ratio against a leave-one-out reference: the other
    `helpful` updates, clipped to the median, mean (weak on small models)."""
    proofs = {}
    for uid in updates:
        others = [(updates[u].signer, updates[u].tensors) for u in helpful if u != uid]
        ref = None
        if len(others) >= 2:
            reference, _ = aggregate_sparse(others, manifest, codec)
            ref = scoring.reference_score(ev, theta, reference, batches.own[uid],
                                          batches.own_before[uid], batches.rand,
                                          batches.rand_before, cfg)
        proofs[uid] = Proof(scoring.proof_bit(scores[uid], ref))
    return proofs
