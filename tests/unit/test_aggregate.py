from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node.outer.aggregate import aggregate_mean, aggregate_sparse, clip_scales, median, sparse_norm
from protocol.sparse import compress, decompress
from protocol.spec import CodecSpec, TensorSpec

SPEC = CodecSpec()
MANIFEST = (TensorSpec("w", (128, 128)), TensorSpec("b", (128,)))


def contribution(seed: int, scale: float = 1.0) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [compress(torch.randn(t.shape, generator=gen) * scale, SPEC) for t in MANIFEST]


def test_sparse_norm_matches_dense_norm() -> None:
    for st_ in contribution(3):
        spec = MANIFEST[0] if st_.indices.shape[1] == SPEC.k else MANIFEST[1]
        dense = decompress(st_, spec.shape, SPEC)
        assert sparse_norm(st_) == pytest.approx(float(dense.double().norm()), rel=1e-6)


def test_median_and_clip_scales() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    scales = clip_scales([1.0, 2.0, 10.0, math.inf])
    assert scales[:2] == [1.0, 1.0]
    assert scales[2] == pytest.approx(0.2)
    assert scales[3] == 0.0


def test_outlier_is_clipped_to_the_median_norm() -> None:
    peers = [(bytes([i]) * 20, contribution(i)) for i in range(3)]
    huge = (b"\xff" * 20, contribution(99, scale=1000.0))
    agg, stats = aggregate_sparse([*peers, huge], MANIFEST, SPEC)
    honest, _ = aggregate_sparse(peers, MANIFEST, SPEC)
    assert stats.clipped >= 2  # the outlier, on both tensors
    # the attacker moves the mean by at most one median-norm share
    assert float(agg[0].norm()) < 2 * float(honest[0].norm())


@given(st.permutations(list(range(5))), st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_sparse_aggregation_is_bit_identical_under_arrival_order(order: list[int],
                                                                  seed: int) -> None:
    peers = [(bytes([7 * i + 1]) * 20, contribution(seed + i, scale=1 + i)) for i in range(5)]
    reference, _ = aggregate_sparse(peers, MANIFEST, SPEC)
    shuffled, _ = aggregate_sparse([peers[i] for i in order], MANIFEST, SPEC)
    for a, b in zip(reference, shuffled, strict=True):
        assert torch.equal(a, b)


@given(st.permutations(list(range(4))))
@settings(max_examples=20, deadline=None)
def test_dense_mean_is_bit_identical_under_arrival_order(order: list[int]) -> None:
    gen = torch.Generator().manual_seed(0)
    peers = [(bytes([i]) * 20, [torch.randn(33, generator=gen) * 10**i]) for i in range(4)]
    reference = aggregate_mean(peers)
    assert torch.equal(reference[0], aggregate_mean([peers[i] for i in order])[0])


def test_float_sum_is_order_sensitive_so_the_sort_matters() -> None:
    # guards the premise: without a fixed order, float32 means can differ in the last bit
    values = [torch.tensor([1e8], dtype=torch.float32), torch.tensor([1.0]),
              torch.tensor([-1e8])]
    forward = (values[0] + values[1]) + values[2]
    backward = (values[0] + values[2]) + values[1]
    assert not torch.equal(forward, backward)
