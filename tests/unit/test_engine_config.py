"""Operator engine settings (node/engine/config.py, device.py): they change how the
inner loop computes, never what the outer step makes of the same contributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from node.engine.config import EngineConfig, micro_batches
from node.engine.data import window_batch
from node.engine.device import resolve_device
from node.engine.inner import InnerConfig, InnerTrainer
from node.engine.local import EngineSpec, LocalEngine
from node.engine.model import build_model, get_config
from node.errors import ConfigError
from node.outer.step import select
from protocol.envelope import BaseModel, Expectation, seal
from tests.support.keys import identity

TOKENS = np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint16)
SPEC = EngineSpec(model="tiny", seed=0, inner=InnerConfig(lr=3e-3, warmup_steps=1,
                                                         total_steps=100))


def _batch(step: int, rows: int = 8) -> torch.Tensor:
    return window_batch(TOKENS, seed=0, window=0, uid=0, step=step, batch_size=rows,
                        seq_len=32)


def _grads(config: EngineConfig) -> tuple[float, list[torch.Tensor]]:
    model = build_model(get_config("tiny"), seed=0)
    model.checkpoint_blocks = config.activation_checkpointing
    return InnerTrainer(model, SPEC.inner, config).compute_grads(_batch(0))


def test_micro_batches_cover_the_batch_in_order() -> None:
    assert micro_batches(8, None) == [(0, 8)]
    assert micro_batches(8, 3) == [(0, 3), (3, 6), (6, 8)]
    assert micro_batches(2, 5) == [(0, 2)]
    with pytest.raises(ConfigError):
        EngineConfig(micro_batch=0)
    with pytest.raises(ConfigError):
        EngineConfig(precision="fp16")  # type: ignore[arg-type]


@pytest.mark.parametrize("micro_batch", [1, 3, 4])
def test_micro_batches_accumulate_to_the_whole_batch(micro_batch: int) -> None:
    loss, grads = _grads(EngineConfig())
    loss_m, grads_m = _grads(EngineConfig(micro_batch=micro_batch))
    assert loss_m == pytest.approx(loss, rel=1e-6)
    for g, gm in zip(grads, grads_m, strict=True):
        torch.testing.assert_close(gm, g, rtol=1e-4, atol=1e-7)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    loss, grads = _grads(EngineConfig())
    loss_c, grads_c = _grads(EngineConfig(activation_checkpointing=True))
    assert loss_c == loss
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_c, strict=True))


def test_bf16_trains_and_keeps_fp32_state() -> None:
    engine = LocalEngine(SPEC, config=EngineConfig(precision="bf16"))
    fp32_grads = _grads(EngineConfig())[1]
    _, bf16_grads = _grads(EngineConfig(precision="bf16"))
    assert all(g.dtype == torch.float32 for g in bf16_grads)
    assert any(not torch.equal(a, b) for a, b in zip(fp32_grads, bf16_grads, strict=True))
    losses = engine.train([_batch(s % 2) for s in range(12)])
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1  # it learns
    assert all(p.dtype == torch.float32 for p in engine.full_params())


def test_precision_never_changes_the_outer_step() -> None:
    """A bf16 miner's and an fp32 miner's contributions, applied by an fp32 engine and a
    bf16 engine with micro-batches and checkpointing: the same θ, bit for bit."""
    fp32 = LocalEngine(SPEC)
    other = LocalEngine(SPEC, config=EngineConfig(precision="bf16", micro_batch=2,
                                                  activation_checkpointing=True))
    wires = []
    for n, engine in ((1, fp32), (2, other)):
        engine.train([_batch(s) for s in range(2)])
        wires.append(seal(identity(n), run_id="r", window=0, base=BaseModel(0, engine.digest()),
                          codec=engine.codec, manifest=engine.manifest,
                          payload=engine.encode()))
    chosen, _ = select(wires, Expectation("r", 0, fp32.codec, fp32.manifest),
                       {identity(1).address, identity(2).address})
    assert fp32.digest() == other.digest()
    fp32.apply(chosen)
    other.apply(chosen)
    assert fp32.digest() == other.digest()


def test_devices_resolve_or_fail_with_a_typed_error() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    for bad in ("tpu", "cuda:99", "not a device"):
        with pytest.raises(ConfigError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_offloaded_error_feedback_is_kept_on_the_cpu() -> None:
    engine = LocalEngine(SPEC, config=EngineConfig(offload_error_feedback=True))
    engine.train([_batch(0)])
    engine.encode()
    state = engine.local_state()
    assert state
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in state.values())
    assert any(float(t.abs().sum()) > 0 for t in state.values())


def test_the_vocabulary_follows_the_tokenizer_padded_to_128() -> None:
    from node.runtime.runspec import RunAssets, RunSpec, padded_vocab

    assert [padded_vocab(v) for v in (1, 128, 129, 256, 50_257)] == [128, 128, 256, 256,
                                                                    50_304]
    # the 1b shape with the embedded byte tokenizer: 256 rows, not the nominal 32000
    assets = RunAssets(RunSpec(model="1b", corpus_bytes=2**16))
    assert assets.model_config.vocab_size == 256
    assert RunAssets(RunSpec(model="1b", vocab_size=32_000,
                             corpus_bytes=2**16)).model_config.vocab_size == 32_000


def test_evaluation_batches_forwards_and_keeps_the_numbers() -> None:
    from node.engine.evaluator import mean_loss
    from node.engine.inner import evaluate

    model = build_model(get_config("tiny"), seed=0)
    batches = [_batch(s, rows=4) for s in range(3)]
    one_by_one = evaluate(model, batches)
    together = mean_loss(model, batches)
    chunked = mean_loss(model, batches, EngineConfig(micro_batch=5))
    assert together == pytest.approx(one_by_one, rel=1e-6)
    assert chunked == pytest.approx(together, rel=1e-6)
    assert mean_loss(model, batches) == together  # deterministic
    mixed = [_batch(0, rows=4), _batch(1, rows=2)]  # shapes differ: batch by batch
    assert mean_loss(model, mixed) == pytest.approx(evaluate(model, mixed), rel=1e-6)
