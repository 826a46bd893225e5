"""Pure scoring functions: deterministic, seeded, and the documented rules."""

from __future__ import annotations

import torch

from node.engine.data import stdlib_corpus
from node.engine.model import build_model, get_config, model_manifest
from protocol.envelope import BaseModel
from protocol.sparse import compress
from protocol.spec import CodecSpec
from validator import scoring
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


def test_loss_score_is_deterministic_and_signed() -> None:
    tokens = stdlib_corpus(2**20).train
    model = build_model(get_config("tiny"), seed=0)
    manifest = model_manifest(model)
    theta = [p.detach().clone() for p in model.parameters()]
    own = scoring.own_batches(tokens, CFG, 1, 0, 0)
    rand = scoring.random_batches(tokens, CFG, 1, 0)
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
    assert scoring.data_factor(0.05, 5, ref) == 0.0  # after warm-up, below 0.1
    assert scoring.data_factor(0.05, 1, ref) == 0.05
    assert scoring.data_factor(-0.3, 1, ref) == 0.0


def test_sync_score() -> None:
    d = bytes(range(32))
    assert scoring.sync_score(BaseModel(5, d), 5, d) == 1.0
    assert scoring.sync_score(BaseModel(5, bytes(32)), 5, d) == 0.0
    assert scoring.sync_score(BaseModel(4, bytes(32)), 5, d) == 0.5
    assert scoring.sync_score(BaseModel(1, bytes(32)), 5, d) == 0.0
    assert scoring.sync_score(BaseModel(6, d), 5, d) == 0.0
    assert scoring.relative_gain(float("nan"), 1.0) == -1.0
