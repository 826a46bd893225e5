"""Pure scoring functions: deterministic, seeded, and the documented rules."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from node.engine.data import stdlib_corpus, window_batch
from node.engine.inner import InnerConfig, InnerTrainer, PublicMoment
from node.engine.model import Decoder, build_model, get_config, model_manifest
from node.outer.aggregate import median_norms, sparse_norm
from protocol.envelope import BaseModel
from protocol.sparse import SparseTensor, compress
from protocol.spec import CodecSpec, Manifest
from validator import scoring
from validator.errors import ConfigError
from validator.proof import public_settled
from validator.scoring import LossScore, ScoringConfig

CFG = ScoringConfig(data_seed=0, inner_steps=4, batch_size=2, seq_len=32, own_steps=2,
                    rand_batches=2)
SPEC = CodecSpec()


def test_batches_are_seeded_and_distinct() -> None:
    tokens = stdlib_corpus(2**20).train
    a = scoring.own_batches(tokens, CFG, 7, 3, 1)
    b = scoring.own_batches(tokens, CFG, 7, 3, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    r1 = scoring.random_batches(tokens, CFG, 7, 3)
    r2 = scoring.random_batches(tokens, CFG, 8, 3)
    assert not torch.equal(r1[0], r2[0])


def _window() -> tuple[Decoder, Manifest, list[torch.Tensor], list[torch.Tensor],
                      list[torch.Tensor]]:
    """A fresh `tiny` model, its manifest, θ, and one miner's own and the random batches."""
    tokens = stdlib_corpus(2**20).train
    model = build_model(get_config("tiny"), seed=0)
    theta = [p.detach().clone() for p in model.parameters()]
    return (model, model_manifest(model), theta, scoring.own_batches(tokens, CFG, 1, 0, 0),
            scoring.random_batches(tokens, CFG, 1, 0))


def test_loss_score_is_deterministic_and_signed() -> None:
    model, manifest, theta, own, rand = _window()
    model.zero_grad()
    torch.autograd.backward(model.loss(own[0]))
    grad = [compress(p.grad.detach(), SPEC) for p in model.parameters()]  # type: ignore[union-attr]
    ev = scoring.Evaluator(build_model(get_config("tiny"), seed=1), manifest, SPEC)
    ev.load(theta, None, 0.0)
    own_before, rand_before = ev.loss(own), ev.loss(rand)
    big = ScoringConfig(**{**CFG.__dict__, "lr_factor": 0.01})
    s1 = scoring.loss_score(ev, theta, grad, own, own_before, rand, rand_before, big)
    s2 = scoring.loss_score(ev, theta, grad, own, own_before, rand, rand_before, big)
    assert s1 == s2
    assert s1.own > 0  # a gradient step on its own batch lowers that batch's loss


def test_proof_bits_and_bma() -> None:
    assert scoring.proof_bit(LossScore(0.2, 0.1), None) == 1.0
    assert scoring.proof_bit(LossScore(0.1, 0.2), None) == -1.0
    assert scoring.proof_bit(LossScore(-0.1, -0.2), None) == -1.0  # harmful: never +1
    assert scoring.proof_bit(LossScore(0.3, 0.1), LossScore(0.2, 0.1)) == 1.0
    assert scoring.proof_bit(LossScore(0.15, 0.1), LossScore(0.2, 0.1)) == -1.0
    bma = 0.0
    for _ in range(3):
        bma = scoring.proof_step(bma, 1.0)
    assert abs(bma - (1 - 0.95**3)) < 1e-12
    ref = ScoringConfig(data_seed=0, inner_steps=1, batch_size=1, seq_len=2)
    assert scoring.data_factor(0.5, 2, ref) == 0.0  # in the warm-up a new key earns nothing
    assert scoring.data_factor(0.5, 3, ref) == 1.0  # a gate: equal work, equal pay
    assert scoring.data_factor(0.05, 5, ref) == 1.0
    assert scoring.data_factor(0.0, 5, ref) == 0.0
    assert scoring.data_factor(-0.3, 5, ref) == 0.0
    strict = ScoringConfig(data_seed=0, inner_steps=1, batch_size=1, seq_len=2,
                           bma_threshold=0.1)
    assert scoring.data_factor(0.05, 5, strict) == 0.0
    assert scoring.data_factor(0.15, 5, strict) == 1.0
    off = ScoringConfig(data_seed=0, inner_steps=1, batch_size=1, seq_len=2,
                        proof_of_data=False)
    assert scoring.data_factor(-0.3, 5, off) == 1.0
    assert scoring.data_factor(0.9, 2, off) == 0.0  # the warm-up still holds


def test_sync_score() -> None:
    d = bytes(range(32))
    assert scoring.sync_score(BaseModel(5, d), 5, d) == 1.0
    assert scoring.sync_score(BaseModel(5, bytes(32)), 5, d) == 0.0
    assert scoring.sync_score(BaseModel(4, bytes(32)), 5, d) == 0.5
    assert scoring.sync_score(BaseModel(1, bytes(32)), 5, d) == 0.0
    assert scoring.sync_score(BaseModel(6, d), 5, d) == 0.0
    assert scoring.relative_gain(float("nan"), 1.0) == -1.0


def test_scaling_an_update_earns_nothing() -> None:
    """Scored at the window's median norms, an update and any multiple of it score the
    same; without the rescaling a larger multiple scores higher (the attack it stops)."""
    model, manifest, theta, own, rand = _window()
    torch.autograd.backward(model.loss(rand[0]))
    grads = [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]
    update = [compress(g, SPEC) for g in grads]
    tripled = [compress(3.0 * g, SPEC) for g in grads]
    ev = scoring.Evaluator(build_model(get_config("tiny"), seed=1), manifest, SPEC)
    ev.load(theta, None, 0.0)
    before = (ev.loss(own), ev.loss(rand))
    cfg = ScoringConfig(**{**CFG.__dict__, "lr_factor": 0.005})
    norms = median_norms([update, tripled])

    def score(u: list[SparseTensor], n: list[float] | None) -> LossScore:
        return scoring.loss_score(ev, theta, u, own, before[0], rand, before[1], cfg, n)

    raw, raw3 = score(update, None), score(tripled, None)
    assert raw3.rand > raw.rand > 0  # unnormalised, the bigger step "helps" more
    fair, fair3 = score(update, norms), score(tripled, norms)
    assert abs(fair3.rand - fair.rand) < 1e-6
    assert abs(fair3.own - fair.own) < 1e-6
    assert fair.rand > 0


def test_at_norms_leaves_zero_and_hits_the_target() -> None:
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    st, zero = compress(x, SPEC), compress(torch.zeros(64, 64), SPEC)
    out = scoring.at_norms([st, zero], [2.5, 7.0])
    assert abs(sparse_norm(out[0]) - 2.5) < 1e-5
    assert sparse_norm(out[1]) == 0.0


def _sent(values: dict[int, float], numel: int = 8) -> scoring.SentValues:
    idx = torch.tensor(sorted(values), dtype=torch.long)
    vals = torch.tensor([values[i] for i in sorted(values)], dtype=torch.float64)
    return scoring.SentValues([idx], [vals])


def test_attribution_fits_the_sent_values_at_their_positions() -> None:
    """Replays that share one direction (as all do from the same θ) and differ in what
    their assignment adds: an update of one of them is attributed to it alone, whatever
    its scale; elsewhere than at the sent positions does not count."""
    common = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    a = common + torch.tensor([0.0, 0.5, 0.0, -0.3, 0.0, 0.2, 0.0, 0.0])
    b = common + torch.tensor([0.0, -0.2, 0.0, 0.4, 0.0, 0.1, 0.0, 0.0])
    c = common + torch.tensor([0.0, 0.1, 0.0, 0.2, 0.0, -0.5, 0.0, 0.0])
    sent = _sent({i: 3 * float(a[i]) for i in (1, 3, 5)})
    columns = [scoring.at_positions(sent, [r + 9.0 * (torch.arange(8) % 2 == 0)])
               for r in (a, b, c)]  # the even positions are never sent
    shares = scoring.attribution(sent, columns)
    assert abs(shares[0] - 1.0) < 1e-9
    assert all(abs(s) < 1e-9 for s in shares[1:])
    assert abs(scoring.replay_evidence(shares, 0) - 1.0) < 1e-9
    assert scoring.replay_evidence(shares, 1) < -0.99  # the update is another's
    # half one, half another: neither is proven
    mixed = _sent({i: 0.5 * float(a[i] + b[i]) for i in (1, 3, 5)})
    halves = scoring.attribution(mixed, [scoring.at_positions(mixed, [r]) for r in (a, b, c)])
    assert abs(scoring.replay_evidence(halves, 0)) < 1e-6  # fp32 replays
    # nothing to explain, or nothing that explains: all zero
    assert scoring.attribution(_sent({}), columns[:1]) == [0.0]
    assert scoring.attribution(sent, [torch.zeros(3), torch.full((3,), float("nan"))]) \
        == [0.0, 0.0]


def test_the_attribution_sample_is_the_validators_draw() -> None:
    sent = scoring.SentValues([torch.arange(10), torch.arange(6) * 2],
                              [torch.arange(10.0, dtype=torch.float64),
                               -torch.arange(6.0, dtype=torch.float64)])
    assert scoring.attribution_sample(sent, 1, limit=16) is sent  # all of them fit
    drawn = scoring.attribution_sample(sent, 1, limit=5)
    again = scoring.attribution_sample(sent, 1, limit=5)
    other = scoring.attribution_sample(sent, 2, limit=5)
    assert sum(p.numel() for p in drawn.positions) == 5
    assert all(torch.equal(x, y) for x, y in zip(drawn.positions, again.positions, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(drawn.positions, other.positions,
                                                     strict=True))
    for idx, vals, full_idx, full_vals in zip(drawn.positions, drawn.values, sent.positions,
                                              sent.values, strict=True):
        for i, v in zip(idx.tolist(), vals.tolist(), strict=True):  # values stay with positions
            assert v == full_vals[full_idx.tolist().index(i)]


def test_replay_evidence_and_bit() -> None:
    assert abs(scoring.replay_evidence([0.8, 0.1, -0.1], 0) - 0.7) < 1e-12
    assert scoring.replay_evidence([0.4, 0.4, 0.2], 1) == 0.0  # no more than another's
    assert scoring.replay_evidence([1.0], 0) == -1.0  # nothing to compare with
    assert scoring.replay_bit(0.3, CFG) == 1.0
    assert scoring.replay_bit(0.29, CFG) == -1.0
    assert not CFG.replays  # no inner config: the proof is by loss
    replaying = ScoringConfig(**{**CFG.__dict__, "inner": InnerConfig(reset_each_window=True)})
    assert replaying.replays
    keeping = ScoringConfig(**{**CFG.__dict__, "inner": InnerConfig()})
    assert not keeping.replays  # a kept AdamW state cannot be replayed


def test_assigned_and_unassigned_batches() -> None:
    tokens = stdlib_corpus(2**20).train
    short = ScoringConfig(**{**CFG.__dict__, "replay_steps": 2})
    a = scoring.assigned_batches(tokens, CFG, 3, 1)
    assert len(a) == CFG.inner_steps
    assert len(scoring.assigned_batches(tokens, short, 3, 1)) == 2
    first = window_batch(tokens, seed=CFG.data_seed, window=3, uid=1, step=0,
                         batch_size=CFG.batch_size, seq_len=CFG.seq_len)
    assert torch.equal(a[0], first)  # what the miner trained on first
    u = scoring.unassigned_batches(tokens, CFG, 7, 3)
    assert len(u) == len(a)
    assert not torch.equal(u[0], a[0])


def test_the_evaluator_replays_a_miner_bit_for_bit() -> None:
    """The validator's replay of a window is the miner's own Δ, whatever the miner's
    history: what the proof of assigned data compares the sent update with."""
    _model, manifest, theta, own, _ = _window()
    inner = InnerConfig(lr=2e-3, warmup_steps=2, total_steps=100, reset_each_window=True)
    miner = InnerTrainer(build_model(get_config("tiny"), seed=0), inner)
    miner.run(own[:1], first_step=0)  # an earlier window: its moments must not matter
    sent = miner.run(own, first_step=8).delta
    ev = scoring.Evaluator(build_model(get_config("tiny"), seed=1), manifest, SPEC)
    replay = ev.replay(theta, own, replace(inner, reset_each_window=False), first_step=8)
    assert all(torch.equal(a, b) for a, b in zip(sent, replay, strict=True))
    assert all(torch.equal(p, t) for p, t in zip(ev.params, theta, strict=True))  # θ kept


def test_replay_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="replay_steps"):
        ScoringConfig(**{**CFG.__dict__, "replay_steps": 0})
    with pytest.raises(ConfigError, match="replay_threshold"):
        ScoringConfig(**{**CFG.__dict__, "replay_threshold": 0.0})


def test_the_public_second_moment_settles_once_it_lacks_little_of_the_runs_weight() -> None:
    """A validator's replays may disprove once its public estimate lacks at most
    `public_settle_weight` of the weight a whole-run estimate gives the windows it
    missed; without a public estimate, always."""
    cfg = scoring.ScoringConfig(data_seed=1, inner_steps=2, batch_size=1, seq_len=4)
    ev = SimpleNamespace(public=None)
    assert public_settled(ev, cfg, 50)  # type: ignore[arg-type]
    ev.public = PublicMoment(0.9, windows=1)
    assert public_settled(ev, cfg, 1)  # type: ignore[arg-type]  # the whole run
    assert not public_settled(ev, cfg, 2)  # type: ignore[arg-type]  # lacks 47%
    ev.public.windows = 28  # lacks 0.9^28 = 5.2%
    assert not public_settled(ev, cfg, 100)  # type: ignore[arg-type]
    ev.public.windows = 29  # lacks 4.7%
    assert public_settled(ev, cfg, 100)  # type: ignore[arg-type]
    ev.public.windows = 28
    assert public_settled(ev, replace(cfg, public_settle_weight=0.06), 100)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        scoring.ScoringConfig(data_seed=1, inner_steps=2, batch_size=1, seq_len=4,
                              public_settle_weight=1.0)
