"""One miner, DiLoCo with outer lr 1 and no momentum: the outer step hands back exactly
what the inner steps reached, so the run is plain AdamW over the same batches (up to
the fp32 round-off of θ_start − (θ_start − θ_after))."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from node.engine.data import window_batch
from node.engine.inner import InnerConfig, InnerTrainer
from node.engine.local import EngineSpec, LocalEngine
from node.engine.model import build_model, get_config
from node.outer.optimizers import OuterConfig
from node.outer.step import select
from protocol.envelope import BaseModel, Expectation, seal
from tests.support.keys import identity

WINDOWS, H = 4, 5
INNER = InnerConfig(lr=3e-3, warmup_steps=3, total_steps=WINDOWS * H)
TOKENS = np.random.default_rng(1).integers(0, 256, 60_000, dtype=np.uint16)


def _batch(window: int, step: int) -> torch.Tensor:
    return window_batch(TOKENS, seed=0, window=window, uid=0, step=step, batch_size=2,
                        seq_len=32)


def _diloco_one_miner(momentum: float, lr: float) -> list[torch.Tensor]:
    outer = OuterConfig(optimizer="diloco", lr=lr, momentum=momentum)
    engine = LocalEngine(EngineSpec(model="tiny", seed=0, inner=INNER, outer=outer))
    for w in range(WINDOWS):
        engine.train([_batch(w, s) for s in range(H)])
        wire = seal(identity(0), run_id="m1", window=w, base=BaseModel(w, engine.digest()),
                    codec=engine.codec, manifest=engine.manifest, payload=engine.encode())
        chosen, skipped = select([wire], Expectation("m1", w, engine.codec, engine.manifest),
                                 None)
        assert skipped == []
        engine.apply(chosen)
    return engine.full_params()


def _plain_adamw() -> list[torch.Tensor]:
    model = build_model(get_config("tiny"), seed=0)
    trainer = InnerTrainer(model, INNER)
    for w in range(WINDOWS):
        for s in range(H):
            _, grads = trainer.compute_grads(_batch(w, s))
            trainer.apply_grads(grads)
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def adamw() -> list[torch.Tensor]:
    return _plain_adamw()


def test_one_diloco_miner_with_lr_1_and_no_momentum_is_plain_adamw(
        adamw: list[torch.Tensor]) -> None:
    diloco = _diloco_one_miner(momentum=0.0, lr=1.0)
    worst = max(float((a - b).abs().max()) for a, b in zip(diloco, adamw, strict=True))
    scale = max(float(a.abs().max()) for a in adamw)
    assert worst <= 1e-6 * scale, (worst, scale)  # fp32 round-off, not a different path


def test_the_check_sees_a_different_outer_step(adamw: list[torch.Tensor]) -> None:
    for momentum, lr in ((0.9, 1.0), (0.0, 0.7)):
        other = _diloco_one_miner(momentum=momentum, lr=lr)
        worst = max(float((a - b).abs().max()) for a, b in zip(other, adamw, strict=True))
        assert worst > 1e-4, (momentum, lr, worst)
