from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node.outer.optimizers import OuterConfig, SparseLoCo, make_outer
from protocol.sparse import decode_payload, decompress
from protocol.spec import TensorSpec

MANIFEST = (TensorSpec("w", (64, 128)), TensorSpec("g", (64,)))


def random_tensors(seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=gen) * scale for t in MANIFEST]


@given(st.integers(0, 2**20), st.integers(1, 4), st.sampled_from(["fixed12", "gap"]))
@settings(max_examples=30, deadline=None)
def test_error_feedback_keeps_what_was_not_sent(seed: int, rounds: int, coding: str) -> None:
    outer = SparseLoCo(OuterConfig(index_coding=coding), MANIFEST)  # type: ignore[arg-type]
    for r in range(rounds):
        before = [e.clone() for e in outer.error]
        delta = random_tensors(seed + r)
        payload = outer.encode(delta)
        sent = [decompress(st_, t.shape, outer.codec)
                for st_, t in zip(decode_payload(payload, MANIFEST, outer.codec), MANIFEST,
                                  strict=True)]
        for prev, d, s, now in zip(before, delta, sent, outer.error, strict=True):
            accumulated = 0.95 * prev + d
            untouched = s == 0
            # positions not sent carry the whole accumulated value forward, exactly
            assert torch.equal(now[untouched], accumulated[untouched])
            # sent positions keep only the quantization residual
            torch.testing.assert_close(now + s, accumulated, rtol=1e-5, atol=1e-6)


def test_sparseloco_sends_about_one_in_64() -> None:
    outer = SparseLoCo(OuterConfig(), MANIFEST)
    decoded = decode_payload(outer.encode(random_tensors(1)), MANIFEST, outer.codec)
    nonzero = sum(int((decompress(st_, t.shape, outer.codec) != 0).sum())
                  for st_, t in zip(decoded, MANIFEST, strict=True))
    total = sum(t.numel for t in MANIFEST)
    assert nonzero <= total // 64 + 1


def test_diloco_outer_step_is_nesterov() -> None:
    cfg = OuterConfig(optimizer="diloco")
    outer = make_outer(cfg, MANIFEST)
    params = [torch.zeros(t.shape) for t in MANIFEST]
    deltas = [random_tensors(i) for i in range(3)]
    contributions = [(bytes([i]) * 20, outer.decode(outer.encode(d)))
                     for i, d in enumerate(deltas)]
    outer.apply(params, contributions, inner_step=lambda grads: None)
    mean = [sum(d[t] for d in deltas) / 3 for t in range(len(MANIFEST))]
    for p, g in zip(params, mean, strict=True):
        # first step: v = g, update = g + 0.9 g
        torch.testing.assert_close(p, -0.7 * (g + 0.9 * g), rtol=1e-5, atol=1e-6)
