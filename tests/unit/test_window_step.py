"""The outer step every node applies: which envelopes count, and that it is deterministic."""

from __future__ import annotations

import os

import torch

from node.engine.local import EngineSpec, LocalEngine
from node.engine.model import build_model, get_config, model_manifest
from node.outer.optimizers import OuterConfig, SparseLoCo
from node.outer.step import select
from protocol.envelope import BaseModel, Expectation, seal
from tests.support.keys import identity

CODEC = OuterConfig().codec


def _setup() -> tuple[list[torch.Tensor], Expectation, SparseLoCo]:
    model = build_model(get_config("tiny"), seed=0)
    manifest = model_manifest(model)
    return list(model.parameters()), Expectation("run", 3, CODEC, manifest), SparseLoCo(
        OuterConfig(), manifest)


def _envelope(n: int, outer: SparseLoCo, expect: Expectation, scale: float = 1e-3,
              window: int = 3) -> bytes:
    torch.manual_seed(n)
    delta = [torch.randn(t.shape) * scale for t in expect.manifest]
    return seal(identity(n), run_id="run", window=window, base=BaseModel(window, b"\0" * 32),
                codec=CODEC, manifest=expect.manifest, payload=outer.encode(delta))


def test_selection_is_in_signer_order_and_filters_strangers_and_garbage() -> None:
    _, expect, outer = _setup()
    envs = [_envelope(n, outer, expect) for n in (5, 1, 3)]
    allowed = {identity(1).address, identity(5).address}
    chosen, skipped = select([*envs, os.urandom(500), _envelope(1, outer, expect, window=4)],
                             expect, allowed)
    assert [c.signer for c in chosen] == sorted(allowed)
    reasons = sorted(s.reason.split(":")[0] for s in skipped)
    assert "signer not in the aggregation set" in reasons
    assert len(skipped) == 3  # the stranger, the garbage, the wrong window


def test_an_equivocating_signer_counts_for_nobody() -> None:
    _, expect, outer = _setup()
    first = _envelope(1, outer, expect)
    second = _envelope(1, outer, expect, scale=2e-3)
    other = _envelope(2, outer, expect)
    chosen, skipped = select([first, other, second, first], expect, None)
    assert [c.signer for c in chosen] == [identity(2).address]
    assert {s.reason for s in skipped if s.signer == identity(1).address} == {"equivocation"}


def test_apply_is_bit_identical_whatever_the_arrival_order() -> None:
    _, expect, outer = _setup()
    a, b = LocalEngine(EngineSpec()), LocalEngine(EngineSpec())
    envs = [_envelope(n, outer, expect) for n in range(4)]
    chosen_a, _ = select(envs, expect, None)
    chosen_b, _ = select(list(reversed(envs)), expect, None)
    before = a.digest()
    a.apply(chosen_a)
    b.apply(chosen_b)
    assert a.digest() == b.digest() != before


def test_nothing_chosen_leaves_theta_alone() -> None:
    engine = LocalEngine(EngineSpec())
    before = engine.digest()
    stats = engine.apply([])
    assert stats.peers == 0
    assert engine.digest() == before


def test_divergence_needs_two_peers_agreeing_on_another_theta() -> None:
    from node.outer.step import Selected, diverged

    def sel(n: int, base: bytes) -> Selected:
        return Selected(identity(n).address, bytes([n]) * 32, [], base)

    mine, theirs = b"\1" * 32, b"\2" * 32
    me = identity(0).address
    assert diverged(mine, me, [sel(0, mine), sel(1, theirs), sel(2, theirs)]) == 2
    assert diverged(mine, me, [sel(1, theirs), sel(2, mine)]) == 0  # someone shares ours
    assert diverged(mine, me, [sel(1, theirs), sel(2, b"\3" * 32)]) == 0  # no majority
    assert diverged(mine, me, [sel(0, theirs)]) == 0  # our own envelope does not count
