"""Inner AdamW loop: Δ = θ_start − θ_after, restoration, schedule, persistent state."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from node.engine.evaluator import Evaluator
from node.engine.inner import InnerConfig, InnerTrainer, evaluate, lr_at
from node.engine.model import Decoder, ModelConfig, build_model, model_manifest
from node.errors import ConfigError, DataError
from protocol.spec import CodecSpec

CFG = ModelConfig("unit", vocab_size=256, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                  ffn_dim=128, max_seq_len=32)
INNER = InnerConfig(lr=3e-3, warmup_steps=2, total_steps=20)


def batches(n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, 17), generator=gen) for _ in range(n)]


def model() -> Decoder:
    return build_model(CFG, seed=0)


def test_run_restores_start_and_returns_delta() -> None:
    m = model()
    start = [p.detach().clone() for p in m.parameters()]
    result = InnerTrainer(m, INNER).run(batches(3))
    assert result.steps == 3
    assert len(result.losses) == 3
    for p, s in zip(m.parameters(), start, strict=True):
        assert torch.equal(p, s)
        assert p.grad is None

    # A plain manual loop from the same start reaches θ_after = θ_start − Δ.
    ref = model()
    trainer = InnerTrainer(ref, INNER)
    for b in batches(3):
        trainer.apply_grads(trainer.compute_grads(b)[1])
    for s, d, after in zip(start, result.delta, ref.parameters(), strict=True):
        assert d.dtype == torch.float32
        assert torch.equal(d, s - after.detach())
    assert any(d.abs().sum() > 0 for d in result.delta)


def test_optimizer_state_and_step_persist() -> None:
    m = model()
    trainer = InnerTrainer(m, INNER)
    first = trainer.run(batches(2, seed=1))
    state = trainer.optimizer.state[next(m.parameters())]
    assert trainer.step == 2
    assert int(state["step"]) == 2
    second = trainer.run(batches(2, seed=1))
    assert trainer.step == 4
    assert int(state["step"]) == 4
    # Same start, same data, but warm moments and a later lr: a different Δ.
    assert not torch.equal(first.delta[0], second.delta[0])


def test_compute_grads_leaves_no_grads() -> None:
    m = model()
    loss, grads = InnerTrainer(m, INNER).compute_grads(batches(1)[0])
    assert math.isfinite(loss)
    assert [g.shape for g in grads] == [p.shape for p in m.parameters()]
    assert all(p.grad is None for p in m.parameters())


def test_apply_grads_validates_and_skips_nonfinite() -> None:
    m = model()
    trainer = InnerTrainer(m, INNER)
    with pytest.raises(DataError):
        trainer.apply_grads([])
    bad = [torch.full_like(p, float("nan")) for p in m.parameters()]
    before = [p.detach().clone() for p in m.parameters()]
    trainer.apply_grads(bad)
    assert trainer.skipped_steps == 1
    assert all(torch.equal(p, b) for p, b in zip(m.parameters(), before, strict=True))


def test_lr_schedule_shape() -> None:
    cfg = InnerConfig(lr=1e-3, warmup_steps=10, total_steps=100, min_lr_ratio=0.1)
    warm = [lr_at(s, cfg) for s in range(11)]
    assert all(a < b for a, b in itertools.pairwise(warm[:10]))
    assert warm[0] > 0
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    decay = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    assert lr_at(5000, cfg) == pytest.approx(1e-4)
    assert lr_at(0, InnerConfig(warmup_steps=0, total_steps=10)) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "kwargs",
    [{"lr": 0.0}, {"betas": (0.9, 1.0)}, {"weight_decay": -1.0}, {"grad_clip": 0.0},
     {"warmup_steps": -1}, {"warmup_steps": 50, "total_steps": 10}, {"min_lr_ratio": 1.5},
     {"eps": 0.0}, {"eps": math.inf}, {"reset_scope": "second_moment"}],
)
def test_inner_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        InnerConfig(**kwargs)  # type: ignore[arg-type]


def test_evaluate_restores_mode_and_training_helps() -> None:
    m = model()
    data = batches(1, seed=7)
    before = evaluate(m, data)
    assert m.training
    trainer = InnerTrainer(m, InnerConfig(lr=3e-3, warmup_steps=0, total_steps=100))
    for _ in range(10):
        trainer.apply_grads(trainer.compute_grads(data[0])[1])
    assert evaluate(m, data) < before - 0.3
    m.eval()
    evaluate(m, data)
    assert not m.training
    with pytest.raises(DataError):
        evaluate(m, [])


RESET = InnerConfig(lr=3e-3, warmup_steps=2, total_steps=20, reset_each_window=True)


def test_a_resetting_trainer_forgets_its_history() -> None:
    """With reset_each_window a window's Δ depends on θ, its batches and first_step only:
    a trainer with two windows behind it and a brand-new one give the same bits."""
    seasoned = InnerTrainer(model(), RESET)
    seasoned.run(batches(2, seed=1), first_step=0)
    seasoned.run(batches(2, seed=2), first_step=2)
    late = seasoned.run(batches(2, seed=3), first_step=4)
    fresh = InnerTrainer(model(), RESET).run(batches(2, seed=3), first_step=4)
    assert all(torch.equal(a, b) for a, b in zip(late.delta, fresh.delta, strict=True))
    # the lr follows the window's step numbers, not the trainer's own count
    other = InnerTrainer(model(), RESET).run(batches(2, seed=3), first_step=0)
    assert not torch.equal(other.delta[0], fresh.delta[0])
    # without the reset, the same history changes the result (the moments carry over)
    keeping = InnerTrainer(model(), INNER)
    keeping.run(batches(2, seed=1))
    keeping.run(batches(2, seed=2))
    assert not torch.equal(keeping.run(batches(2, seed=3)).delta[0], fresh.delta[0])


def test_a_resetting_trainer_needs_the_first_step() -> None:
    trainer = InnerTrainer(model(), RESET)
    with pytest.raises(ConfigError, match="first_step"):
        trainer.run(batches(1))
    with pytest.raises(ConfigError, match="first_step"):
        trainer.run(batches(1), first_step=-1)


def test_adamw_takes_the_configured_eps() -> None:
    trainer = InnerTrainer(model(), InnerConfig(lr=3e-3, eps=1e-5))
    assert trainer.optimizer.defaults["eps"] == 1e-5
    default = InnerTrainer(model(), INNER).run(batches(2)).delta
    damped = trainer.run(batches(2)).delta
    assert not torch.equal(default[0], damped[0])


def test_a_first_moment_reset_carries_the_second_moment() -> None:
    """reset_scope "first_moment" (a study diagnostic): after a reset the first moment
    starts from zero with its bias correction counted from the window's first step, while
    the second moment and its step count carry on: the step equals the hand-computed
    AdamW update lr · g / (sqrt(v̂) + eps) with v = β2·v_carried + (1 − β2)·g²."""
    cfg = InnerConfig(lr=3e-3, warmup_steps=0, total_steps=20, weight_decay=0.0,
                      grad_clip=1e9, reset_each_window=True, reset_scope="first_moment")
    trainer = InnerTrainer(model(), cfg)
    trainer.run(batches(2, seed=1), first_step=0)
    carried = {p: trainer.optimizer.state[p]["exp_avg_sq"].clone() for p in trainer.params}
    trainer.restart(first_step=2)
    assert all(float(trainer.optimizer.state[p]["exp_avg"].abs().max()) == 0.0
               for p in trainer.params)
    assert all(torch.equal(trainer.optimizer.state[p]["exp_avg_sq"], carried[p])
               for p in trainer.params)
    before = [p.detach().clone() for p in trainer.params]
    _, grads = trainer.compute_grads(batches(1, seed=2)[0])
    expected = []
    beta2 = cfg.betas[1]
    for p, g in zip(trainer.params, grads, strict=True):
        v_hat = (beta2 * carried[p] + (1 - beta2) * g * g) / (1 - beta2 ** 3)
        expected.append(lr_at(2, cfg) * g / (v_hat.sqrt() + cfg.eps))
    trainer.apply_grads([g.clone() for g in grads])
    for b, p, e in zip(before, trainer.params, expected, strict=True):
        torch.testing.assert_close(b - p.detach(), e, rtol=1e-4, atol=1e-7)  # fp32 ulps of θ
    # "all" forgets both: the same history gives another step
    fresh = InnerTrainer(model(), InnerConfig(**{**vars(cfg), "reset_scope": "all"}))
    fresh.run(batches(2, seed=1), first_step=0)
    fresh.restart(first_step=2)
    assert not fresh.optimizer.state


PUBLIC = InnerConfig(lr=3e-3, warmup_steps=0, total_steps=20, weight_decay=0.0, grad_clip=1e9,
                     reset_each_window=True, public_second_moment=0.5)


def test_a_public_second_moment_starts_each_window_from_the_public_ema() -> None:
    """Each window folds its public batch's squared gradient at θ into an EMA and starts
    AdamW's second moment from it (unbiased), the first moment fresh: the window's first
    step is lr · g / (sqrt(β2·v_pub + (1 − β2)·g²) + eps)."""
    trainer = InnerTrainer(model(), PUBLIC)
    public = batches(2, seed=9)
    _, g0 = InnerTrainer(model(), PUBLIC).compute_grads(public[0])
    trainer.run(batches(2, seed=1), first_step=0, public=public[0])
    assert trainer.public.sq is not None
    assert trainer.public.windows == 1
    for acc, g in zip(trainer.public.sq, g0, strict=True):
        torch.testing.assert_close(acc, 0.5 * g * g)
    _, g1 = InnerTrainer(model(), PUBLIC).compute_grads(public[1])
    v_pub = [(0.5 * 0.5 * a * a + 0.5 * b * b) / (1 - 0.5 ** 2)
             for a, b in zip(g0, g1, strict=True)]
    trainer.observe_public(public[1])
    trainer.restart(first_step=2)
    beta2 = PUBLIC.betas[1]
    before = [p.detach().clone() for p in trainer.params]
    _, grads = trainer.compute_grads(batches(1, seed=2)[0])
    expected = [lr_at(2, PUBLIC) * g / ((beta2 * v + (1 - beta2) * g * g).sqrt() + PUBLIC.eps)
                for g, v in zip(grads, v_pub, strict=True)]
    trainer.apply_grads([g.clone() for g in grads])
    for b, p, e in zip(before, trainer.params, expected, strict=True):
        torch.testing.assert_close(b - p.detach(), e, rtol=1e-4, atol=1e-7)  # fp32 ulps of θ


def test_a_public_second_moment_replays_for_whoever_saw_the_same_public_batches() -> None:
    """A second trainer (a validator's) that folded in the same public batches replays a
    window bit for bit; one that saw none of them does not."""
    public = batches(3, seed=9)
    miner, replayer = InnerTrainer(model(), PUBLIC), InnerTrainer(model(), PUBLIC)
    for w in range(2):
        miner.run(batches(2, seed=10 + w), first_step=2 * w, public=public[w])
        replayer.observe_public(public[w])
    window = batches(2, seed=3)
    sent = miner.run(window, first_step=4, public=public[2])
    replayed = replayer.run(window, first_step=4, public=public[2])
    assert all(torch.equal(a, b) for a, b in zip(sent.delta, replayed.delta, strict=True))
    newcomer = InnerTrainer(model(), PUBLIC).run(window, first_step=4, public=public[2])
    assert not torch.equal(newcomer.delta[0], sent.delta[0])


def test_a_public_second_moment_survives_its_state_and_folds_each_tagged_window_once() -> None:
    """`state`/`load_state` carry the EMA, its count and newest tag (fp32, as checkpoint
    stores keep them); another decay or a misshaped entry is ignored; a tagged window is
    folded once."""
    trainer = InnerTrainer(model(), PUBLIC)
    public = batches(2, seed=9)
    trainer.observe_public(public[0], tag=0)
    trainer.observe_public(public[0], tag=0)  # folded already: skipped
    assert trainer.public is not None
    assert trainer.public.windows == 1
    state = trainer.public_state()
    assert {k for k in state if not k[-1].isdigit()} == {"public.decay", "public.windows",
                                                         "public.last"}
    keep = lambda p, t: t.to(p.device, p.dtype)  # noqa: E731
    back = InnerTrainer(model(), PUBLIC)
    back.load_public_state(state, keep)
    assert back.public is not None
    assert (back.public.windows, back.public.last) == (1, 0)
    assert all(torch.equal(a, b) for a, b in zip(back.public.sq or [], trainer.public.sq or [],
                                                 strict=True))
    back.observe_public(public[1], tag=2)
    trainer.observe_public(public[1], tag=2)
    assert all(torch.equal(a, b) for a, b in zip(back.public.sq or [], trainer.public.sq or [],
                                                 strict=True))
    for bad in ({**state, "public.decay": torch.tensor(0.25)},
                {**state, "public.0": torch.ones(3)},
                {k: v for k, v in state.items() if k != "public.1"}):
        other = InnerTrainer(model(), PUBLIC)
        other.load_public_state(bad, keep)
        assert other.public is not None
        assert other.public.sq is None
    trainer.public.clear()
    assert (trainer.public.sq, trainer.public.windows, trainer.public.last) == (None, 0, None)
    assert trainer.public_state() == {}


def test_a_public_second_moment_needs_the_public_batch_and_a_reset() -> None:
    with pytest.raises(DataError, match="public batch"):
        InnerTrainer(model(), PUBLIC).run(batches(1), first_step=0)
    with pytest.raises(ConfigError, match="public_second_moment"):
        InnerConfig(public_second_moment=0.9)
    with pytest.raises(ConfigError, match="public_second_moment"):
        InnerConfig(reset_each_window=True, public_second_moment=1.0)
    with pytest.raises(ConfigError, match="no public second moment"):
        InnerTrainer(model(), RESET).observe_public(batches(1)[0])


def test_a_validators_evaluator_replays_from_the_public_second_moment_it_folded() -> None:
    """The validator's scratch Evaluator folds each window's public batch once, at that
    window's θ, and starts every replay of the window from it: the miner's Δ bit for bit.
    An evaluator that folded nothing replays from fresh state, which differs."""
    miner_model = model()
    theta = [p.detach().clone() for p in miner_model.parameters()]
    miner = InnerTrainer(miner_model, PUBLIC)
    ev = Evaluator(model(), model_manifest(miner_model), CodecSpec())
    public = batches(2, seed=9)
    miner.observe_public(public[0])
    ev.observe_public(theta, public[0], PUBLIC)
    window = batches(2, seed=3)
    sent = miner.run(window, first_step=2, public=public[1])
    ev.observe_public(theta, public[1], PUBLIC)
    ev.observe_public(theta, public[1], RESET)  # a run without one: nothing folded
    assert ev.public is not None
    assert ev.public.windows == 2
    replayed = ev.replay(theta, window, PUBLIC, first_step=2)
    assert all(torch.equal(a, b) for a, b in zip(sent.delta, replayed, strict=True))
    blank = Evaluator(model(), model_manifest(miner_model), CodecSpec())
    assert not torch.equal(blank.replay(theta, window, PUBLIC, 2)[0], sent.delta[0])
