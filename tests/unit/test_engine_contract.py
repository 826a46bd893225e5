"""The `Engine` contract (node/engine/base.py), run against every implementation.

A new engine (device placement, FSDP sharding) joins by adding a factory to
`ENGINES`; it must pass every test here unchanged.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from node.engine.base import Engine
from node.engine.config import EngineConfig
from node.engine.data import window_batch
from node.engine.inner import InnerConfig
from node.engine.local import EngineSpec, LocalEngine
from node.engine.ranks import init_ranks
from node.engine.sharded import ShardedEngine
from node.engine.store import CheckpointStore
from node.errors import DataError, EngineError
from node.outer.optimizers import OuterConfig
from node.outer.step import params_digest, select
from protocol.baseproof import proof_positions
from protocol.envelope import BaseModel, Expectation, seal
from protocol.identity import Identity
from tests.support.keys import identity

INNER = InnerConfig(lr=3e-3, warmup_steps=1, total_steps=100)
TOKENS = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint16)
Factory = Callable[[EngineSpec, Path | None], Engine]


def _local(spec: EngineSpec, store: Path | None) -> Engine:
    return LocalEngine(spec, CheckpointStore(store) if store is not None else None)


def _local_bf16(spec: EngineSpec, store: Path | None) -> Engine:
    """bf16 autocast, one-row micro-batches, activation checkpointing: operator settings
    that change how the inner loop computes, never the contract."""
    config = EngineConfig(precision="bf16", micro_batch=1, activation_checkpointing=True)
    return LocalEngine(spec, CheckpointStore(store) if store is not None else None, config)


def _sharded(spec: EngineSpec, store: Path | None) -> Engine:
    """FSDP2 over a one-rank gloo group in this process (2 ranks against one process:
    tests/integration/test_sharded_engine.py)."""
    if not dist.is_initialized():
        init_ranks(0, 1, Path(tempfile.mkdtemp()) / "rendezvous")
    return ShardedEngine(spec, CheckpointStore(store) if store is not None else None)


ENGINES: dict[str, Factory] = {"local": _local, "local-bf16": _local_bf16, "sharded": _sharded}


@pytest.fixture(scope="module", autouse=True)
def _release_process_group() -> Iterator[None]:
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(params=sorted(ENGINES))
def make(request: pytest.FixtureRequest) -> Callable[..., Engine]:
    factory = ENGINES[request.param]

    def build(optimizer: str = "sparseloco", store: Path | None = None,
              inner: InnerConfig = INNER) -> Engine:
        if request.param == "sharded" and optimizer == "ddp":
            pytest.skip("the sharded engine trains windows; per-step DDP is a baseline")
        outer = OuterConfig(optimizer=optimizer)  # type: ignore[arg-type]
        return factory(EngineSpec(model="tiny", seed=0, inner=inner, outer=outer), store)

    return build


def _batches(uid: int, n: int = 2) -> list[torch.Tensor]:
    return [window_batch(TOKENS, seed=0, window=0, uid=uid, step=s, batch_size=2, seq_len=32)
            for s in range(n)]


def _envelope(engine: Engine, who: Identity, window: int = 0) -> bytes:
    return seal(who, run_id="contract", window=window, base=BaseModel(window, engine.digest()),
                codec=engine.codec, manifest=engine.manifest, payload=engine.encode())


def _contributions(make: Callable[..., Engine], n: int = 3, optimizer: str = "sparseloco"
                   ) -> list[bytes]:
    out = []
    for uid in range(n):
        peer = make(optimizer)
        if peer.per_step:
            peer.gradient(_batches(uid, 1)[0])
        else:
            peer.train(_batches(uid))
        out.append(_envelope(peer, identity(uid)))
    return out


def _expect(engine: Engine) -> Expectation:
    return Expectation("contract", 0, engine.codec, engine.manifest)


def test_digest_is_sha256_of_fp32_params_in_manifest_order(make: Callable[..., Engine]) -> None:
    engine = make()
    params = engine.full_params()
    assert [tuple(p.shape) for p in params] == [tuple(t.shape) for t in engine.manifest]
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)
    raw = b"".join(p.contiguous().numpy().tobytes() for p in params)
    assert engine.digest() == hashlib.sha256(raw).digest() == params_digest(params)


def test_training_leaves_theta_bit_identical_and_encode_consumes_the_result(
        make: Callable[..., Engine]) -> None:
    engine = make()
    before = engine.digest()
    losses = engine.train(_batches(0, 3))
    assert len(losses) == 3
    assert all(np.isfinite(losses))
    assert engine.digest() == before
    assert params_digest(engine.full_params()) == before
    payload = engine.encode()
    assert isinstance(payload, bytes)
    assert len(payload) > 0
    with pytest.raises(EngineError):
        engine.encode()


def test_the_same_chosen_set_gives_the_same_theta_on_two_engines(
        make: Callable[..., Engine]) -> None:
    a, b = make(), make()
    envelopes = _contributions(make)
    chosen_a, skipped = select(envelopes, _expect(a), None)
    chosen_b, _ = select(list(reversed(envelopes)), _expect(b), None)
    assert skipped == []
    assert len(chosen_a) == 3
    before = a.digest()
    stats = a.apply(chosen_a)
    b.apply(chosen_b)
    assert stats.peers == 3
    assert a.digest() == b.digest() != before
    assert params_digest(a.full_params()) == a.digest()


def test_an_empty_step_changes_nothing(make: Callable[..., Engine]) -> None:
    engine = make()
    before = engine.digest()
    assert engine.apply([]).peers == 0
    assert engine.digest() == before


@pytest.mark.parametrize("optimizer", ["diloco", "ddp"])
def test_dense_optimizers_step_identically_too(make: Callable[..., Engine], optimizer: str
                                              ) -> None:
    a, b = make(optimizer), make(optimizer)
    envelopes = _contributions(make, 2, optimizer)
    chosen, _ = select(envelopes, _expect(a), None)
    before = a.digest()
    a.apply(chosen)
    b.apply(chosen)
    assert a.digest() == b.digest() != before


def test_full_params_are_copies_and_load_params_round_trips(make: Callable[..., Engine]) -> None:
    engine = make()
    before = engine.digest()
    params = engine.full_params()
    params[0].add_(1.0)
    assert engine.digest() == before  # not a view
    engine.load_params(params)
    assert engine.digest() == params_digest(params) != before
    engine.reset()
    assert engine.digest() == before == make().digest()  # θ_init is the same everywhere


def test_sample_reads_theta_at_positions_and_train_leaves_them(
        make: Callable[..., Engine]) -> None:
    engine = make()
    params = engine.full_params()
    positions = proof_positions(b"\x07" * 32, engine.manifest, 16)
    expected = [float(params[t].reshape(-1)[i]) for t, i in positions]
    assert engine.sample(positions) == expected
    engine.train(_batches(0))
    assert engine.sample(positions) == expected  # θ at the window's start, not θ_local


def test_load_params_refuses_the_wrong_shapes(make: Callable[..., Engine]) -> None:
    engine = make()
    params = engine.full_params()
    with pytest.raises(EngineError):
        engine.load_params(params[:-1])
    with pytest.raises(EngineError):
        engine.load_params([*params[:-1], torch.zeros(3)])


def test_evaluate_is_deterministic_and_leaves_theta(make: Callable[..., Engine]) -> None:
    engine = make()
    before = engine.digest()
    first = engine.evaluate(_batches(7))
    assert first == engine.evaluate(_batches(7))
    assert np.isfinite(first)
    assert engine.digest() == before


def test_local_state_is_the_error_feedback_and_moves_between_engines(
        make: Callable[..., Engine]) -> None:
    a = make()
    assert all(float(t.abs().sum()) == 0.0 for t in a.local_state().values())
    a.train(_batches(0))
    a.encode()
    state = a.local_state()
    assert state
    assert any(float(t.abs().sum()) > 0.0 for t in state.values())
    b = make()
    b.load_local_state({**state, "unknown": torch.ones(2), next(iter(state)): torch.ones(2)})
    got = b.local_state()
    first = next(iter(state))
    assert float(got[first].abs().sum()) == 0.0  # the misshaped entry was ignored
    assert all(torch.equal(got[k], v) for k, v in state.items() if k != first)
    # the same Δ through the same error feedback gives the same bytes; without it, others
    b.load_local_state(state)
    c, d = make(), make()
    c.load_local_state(state)
    for e in (b, c, d):
        e.train(_batches(1))
    assert b.encode() == c.encode() != d.encode()


def test_local_checkpoints_round_trip(make: Callable[..., Engine], tmp_path: Path) -> None:
    engine = make(store=tmp_path)
    assert engine.latest_local() is None
    engine.train(_batches(0))
    engine.encode()
    envelopes = _contributions(make, 2)
    engine.apply(select(envelopes, _expect(engine), None)[0])
    engine.save_local(5, {"run": "contract"})
    digest, state = engine.digest(), engine.local_state()

    fresh = make(store=tmp_path)
    checkpoint = fresh.latest_local()
    assert checkpoint is not None
    assert checkpoint.window == 5
    assert checkpoint.meta["run"] == "contract"
    fresh.restore_local(checkpoint)
    assert fresh.digest() == digest
    assert all(torch.equal(fresh.local_state()[k], v) for k, v in state.items())


def test_a_snapshot_is_written_as_it_was_taken(make: Callable[..., Engine],
                                                tmp_path: Path) -> None:
    # what a checkpoint written behind the window loop relies on (node/runtime/checkpointer.py)
    engine = make(store=tmp_path)
    params, state, digest = engine.full_params(), engine.local_state(), engine.digest()
    engine.train(_batches(0))
    engine.encode()
    engine.apply(select(_contributions(make, 2), _expect(engine), None)[0])
    assert engine.digest() != digest
    engine.write_local(3, params, state, {"run": "contract"})
    checkpoint = make(store=tmp_path).latest_local()
    assert checkpoint is not None
    assert checkpoint.window == 3
    fresh = make()
    fresh.restore_local(checkpoint)
    assert fresh.digest() == digest
    assert all(torch.equal(fresh.local_state()[k], v) for k, v in state.items())


def test_without_a_store_there_is_nothing_to_save_or_restore(make: Callable[..., Engine]) -> None:
    engine = make()
    assert engine.latest_local() is None
    with pytest.raises(EngineError):
        engine.save_local(1, {})
    with pytest.raises(EngineError):
        engine.write_local(1, engine.full_params(), engine.local_state(), {})


def test_the_evaluator_is_scratch_space(make: Callable[..., Engine]) -> None:
    engine = make()
    before = engine.digest()
    evaluator = engine.evaluator()
    theta = engine.full_params()
    evaluator.load(theta, None, 0.0)
    base = evaluator.loss(_batches(3))
    assert base == pytest.approx(engine.evaluate(_batches(3)), rel=1e-6)
    evaluator.load_dense(theta, [torch.ones_like(t) for t in theta], 0.5)
    assert evaluator.loss(_batches(3)) != base
    assert engine.digest() == before


def test_a_public_second_moment_takes_the_windows_public_batch(
        make: Callable[..., Engine]) -> None:
    """With a public second moment, `train` needs the window's public batch; two engines
    that saw the same public batches send the same bytes, and θ stays as it was."""
    inner = replace(INNER, reset_each_window=True, public_second_moment=0.9)
    a, b = make(inner=inner), make(inner=inner)
    with pytest.raises(DataError, match="public batch"):
        a.train(_batches(0), 0)
    start = a.digest()
    for window in range(2):
        public = _batches(99, 1)[0] if window == 0 else _batches(98, 1)[0]
        for engine in (a, b):
            engine.train(_batches(window), 2 * window, public)
        assert a.digest() == start
        assert a.encode() == b.encode()


def test_the_public_second_moment_is_local_state_and_a_window_folds_once(
        make: Callable[..., Engine], tmp_path: Path) -> None:
    """A restart keeps the public second moment (local state, local checkpoint);
    `fold_public` and `train` skip a window folded already; `load_params` forgets it."""
    inner = replace(INNER, reset_each_window=True, public_second_moment=0.9)
    public = [_batches(99 - w, 1)[0] for w in range(3)]
    a = make(inner=inner, store=tmp_path)
    assert not any(k.startswith("public.") for k in a.local_state())  # nothing folded yet
    for window in range(2):
        a.train(_batches(window), 2 * window, public[window])
        a.encode()
    a.fold_public(public[1], 2)  # window 1 again: skipped
    state = a.local_state()
    assert int(state["public.windows"]) == 2
    a.save_local(2, {"run": "contract"})
    checkpoint = make(inner=inner, store=tmp_path).latest_local()
    assert checkpoint is not None
    restored, fresh = make(inner=inner), make(inner=inner)
    restored.restore_local(checkpoint)
    assert all(torch.equal(restored.local_state()[k], v) for k, v in state.items())
    # the next window from the kept estimate sends what the uninterrupted engine sends
    fresh.load_local_state({k: v for k, v in state.items() if not k.startswith("public.")})
    for engine in (a, restored, fresh):
        engine.train(_batches(2), 4, public[2])
    assert a.encode() == restored.encode() != fresh.encode()
    a.load_params(a.full_params())
    assert not any(k.startswith("public.") for k in a.local_state())
    a.fold_public(public[2], 4)  # forgotten: folded anew
    assert int(a.local_state()["public.windows"]) == 1


def test_fold_public_needs_a_public_second_moment(make: Callable[..., Engine]) -> None:
    with pytest.raises(EngineError, match="public second moment"):
        make().fold_public(_batches(99, 1)[0], 0)


def test_a_local_engines_evaluator_folds_into_the_engines_public_second_moment() -> None:
    """What a validator's scoring folds (tagged with the window's first step) is the
    engine's local state, and a window folded either way is not folded again."""
    inner = replace(INNER, reset_each_window=True, public_second_moment=0.9)
    engine = LocalEngine(EngineSpec(model="tiny", seed=0, inner=inner, outer=OuterConfig()))
    evaluator = engine.evaluator()
    public = [_batches(99 - w, 1)[0] for w in range(2)]
    evaluator.observe_public(engine.full_params(), public[0], inner, tag=0)
    engine.fold_public(public[0], 0)  # folded already, by the evaluator
    assert int(engine.local_state()["public.windows"]) == 1
    engine.fold_public(public[1], 2)
    evaluator.observe_public(engine.full_params(), public[1], inner, tag=2)
    assert evaluator.public is not None
    assert evaluator.public.windows == 2
    assert int(engine.local_state()["public.windows"]) == 2
