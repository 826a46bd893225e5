"""`SparsePayload` (a validated payload decoded one tensor at a time) against the eager
decoder, and the outer step fed with it: same tensors, same norms, same θ bit for bit."""

from __future__ import annotations

import pytest
import torch

from node.outer.aggregate import SparseMean, aggregate_sparse, median_norms
from node.outer.optimizers import OuterConfig, make_outer
from node.outer.step import all_finite, decode_contribution
from protocol.sparse import SparsePayload, compress, decode_payload, encode_payload, sparse_norm
from protocol.spec import CodecSpec, TensorSpec

MANIFEST = (TensorSpec("w", (96, 130)), TensorSpec("b", (70,)), TensorSpec("e", (3, 64, 64)))
SPECS = [CodecSpec(index_coding="gap"), CodecSpec(index_coding="fixed12")]


def payload(seed: int, spec: CodecSpec, scale: float = 1.0) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    sts = [compress(torch.randn(t.shape, generator=gen) * scale, spec) for t in MANIFEST]
    return encode_payload(sts, MANIFEST, spec)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.index_coding)
def test_each_tensor_equals_the_eager_decode(spec: CodecSpec) -> None:
    data = payload(1, spec)
    eager = decode_payload(data, MANIFEST, spec)
    lazy = SparsePayload(data, MANIFEST, spec)
    assert len(lazy) == len(eager) == 3
    for t in (2, 0, 1, -1):  # any order, negative too: each read decodes on its own
        a, b = lazy[t], eager[t]
        assert torch.equal(a.indices, b.indices)
        assert torch.equal(a.codes, b.codes)
        assert torch.equal(a.table, b.table)
    assert lazy.norms == tuple(sparse_norm(st) for st in eager)
    assert [st.indices.shape for st in lazy[1:]] == [st.indices.shape for st in eager[1:]]
    with pytest.raises(IndexError):
        lazy[3]


def test_it_holds_the_packed_bytes_not_the_indices() -> None:
    spec = SPECS[0]
    data = payload(2, spec)
    eager = decode_payload(data, MANIFEST, spec)
    decoded = sum(st.indices.numel() * 8 + st.codes.numel() + 16 for st in eager)
    lazy = SparsePayload(data, MANIFEST, spec)
    assert lazy.packed_bytes <= len(data)
    assert decoded > 6 * lazy.packed_bytes


def test_a_read_tensor_is_a_copy_that_cannot_change_the_payload() -> None:
    spec = SPECS[0]
    lazy = SparsePayload(payload(3, spec), MANIFEST, spec)
    first = lazy[0]
    first.table.mul_(2.0)
    first.indices.zero_()
    again = lazy[0]
    assert torch.equal(again.table, decode_payload(payload(3, spec), MANIFEST, spec)[0].table)
    assert int(again.indices[0, -1]) > 0


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.index_coding)
def test_streamed_mean_equals_the_eager_aggregate(spec: CodecSpec) -> None:
    datas = [payload(s, spec, scale) for s, scale in ((4, 1.0), (5, 2.0), (6, 50.0))]
    eager = [(bytes([i]) * 20, decode_payload(d, MANIFEST, spec)) for i, d in enumerate(datas)]
    lazy = [(bytes([i]) * 20, SparsePayload(d, MANIFEST, spec)) for i, d in enumerate(datas)]
    want, want_stats = aggregate_sparse(eager, MANIFEST, spec)
    mean = SparseMean(lazy[::-1], MANIFEST, spec)
    got = list(mean)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert mean.stats == want_stats
    assert want_stats.clipped >= 3
    assert median_norms([t for _, t in lazy]) == median_norms([t for _, t in eager])


def test_outer_step_from_lazy_payloads_gives_the_same_theta() -> None:
    spec = SPECS[0]
    config = OuterConfig(lr=0.65)
    gen = torch.Generator().manual_seed(9)
    start = [torch.randn(t.shape, generator=gen) for t in MANIFEST]
    datas = [payload(s, spec) for s in (7, 8)]
    thetas = []
    for decode in (lambda d: decode_payload(d, MANIFEST, spec),
                   lambda d: decode_contribution(d, MANIFEST, spec)):
        params = [p.clone() for p in start]
        outer = make_outer(config, MANIFEST)
        outer.apply(params, [(bytes([i]) * 20, decode(d)) for i, d in enumerate(datas)],
                    inner_step=lambda grads: None)
        thetas.append(params)
    assert isinstance(decode_contribution(datas[0], MANIFEST, spec), SparsePayload)
    assert all(torch.equal(a, b) for a, b in zip(*thetas, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(start, thetas[0], strict=True))


def test_all_finite_reads_the_validation_norms(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SPECS[0]
    lazy = SparsePayload(payload(10, spec, scale=1e30), MANIFEST, spec)
    assert all_finite(list(lazy))
    monkeypatch.setattr("protocol.sparse.view.read_tensor", None)  # no tensor is decoded
    assert all_finite(lazy)
    lazy.norms = (1.0, float("inf"), 1.0)
    assert not all_finite(lazy)
