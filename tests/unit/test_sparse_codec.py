"""SparseLoCo codec: layout, compression, payload round trips and figures."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import CodecMismatchError, ManifestMismatchError, WrongTypeError
from protocol.sparse import (
    SparseTensor,
    chunk_layout,
    chunk_magnitudes,
    compress,
    decode_payload,
    decompress,
    encode_payload,
    flat_positions,
    from_chunks,
    quantize,
    to_chunks,
)
from protocol.spec import CodecSpec, TensorSpec

FIXED = CodecSpec(index_coding="fixed12")
GAP = CodecSpec(index_coding="gap")
SPECS = [FIXED, GAP]
SHAPES = [(128, 192), (64, 64), (512,), (100,), (130, 70), (3, 50, 40), (7,), (2, 3), ()]


def manifest_of(shapes: list[tuple[int, ...]]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(f"t{i}", s) for i, s in enumerate(shapes))


def round_trip(xs: list[torch.Tensor], spec: CodecSpec) -> tuple[list[SparseTensor], bytes]:
    sts = [compress(x, spec) for x in xs]
    return sts, encode_payload(sts, manifest_of([tuple(x.shape) for x in xs]), spec)


# --- layout -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "n_chunks", "chunk_len", "k", "bits", "last_valid", "block"),
    [
        ((128, 192), 6, 4096, 64, 12, 4096, 64),
        ((512,), 8, 64, 1, 6, 64, 0),
        ((100,), 2, 64, 1, 6, 36, 0),
        ((130, 70), 3, 4096, 64, 12, 9100 - 8192, 0),
        ((3, 50, 40), 2, 4096, 64, 12, 6000 - 4096, 0),
        ((2, 3), 1, 4096, 6, 12, 6, 0),
        ((), 1, 4096, 1, 12, 1, 0),
    ],
)
def test_chunk_layout_rules(shape: tuple[int, ...], n_chunks: int, chunk_len: int, k: int,
                            bits: int, last_valid: int, block: int) -> None:
    lay = chunk_layout(shape, FIXED)
    assert (lay.n_chunks, lay.chunk_len, lay.k, lay.index_bits) == (n_chunks, chunk_len, k, bits)
    assert (lay.last_valid, lay.block, lay.numel) == (last_valid, block, math.prod(shape))


def test_one_d_density_follows_spec() -> None:
    lay = chunk_layout((1024,), CodecSpec(chunk=32, k=256))
    assert (lay.chunk_len, lay.k, lay.index_bits) == (32, 8, 5)


def test_zero_sized_shape_is_rejected() -> None:
    with pytest.raises(WrongTypeError):
        chunk_layout((0, 64), FIXED)


def test_block_chunks_are_row_major_blocks() -> None:
    x = torch.arange(128 * 192, dtype=torch.float32).reshape(128, 192)
    chunks = to_chunks(x, chunk_layout((128, 192), FIXED))
    # block (1, 2) is chunk 1*3 + 2; element (r, c) inside it at (r % 64) * 64 + c % 64
    assert chunks[5, 3 * 64 + 7] == x[64 + 3, 128 + 7]
    assert chunks[1, 0] == x[0, 64]


@pytest.mark.parametrize("shape", SHAPES)
def test_chunks_are_exact_inverses(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    lay = chunk_layout(shape, FIXED)
    chunks = to_chunks(x, lay)
    assert chunks.shape == (lay.n_chunks, lay.chunk_len)
    assert torch.count_nonzero(chunks.reshape(-1)[lay.numel :]) == 0
    assert torch.equal(from_chunks(chunks, shape, lay), x)


@pytest.mark.parametrize("shape", SHAPES)
def test_magnitudes_and_flat_positions_agree_with_chunk_view(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    lay = chunk_layout(shape, FIXED)
    chunks = to_chunks(x, lay)
    expected = chunks.abs()
    expected.view(-1)[lay.numel :] = -1.0  # padding must lose to any real value
    assert torch.equal(chunk_magnitudes(x, lay), expected)
    idx = torch.stack([torch.randperm(lay.chunk_len)[: lay.k] for _ in range(lay.n_chunks)])
    idx[-1] = torch.randperm(lay.last_valid)[: lay.k]
    assert torch.equal(x.reshape(-1)[flat_positions(idx, shape, lay)], chunks.gather(1, idx))


# --- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_decompress_keeps_exactly_the_top_k_positions(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    st_ = compress(x, FIXED)
    lay = chunk_layout(shape, FIXED)
    chunks = to_chunks(x, lay)
    for row in range(lay.n_chunks):
        valid = lay.chunk_len if row < lay.n_chunks - 1 else lay.last_valid
        want = torch.topk(chunks[row, :valid].abs(), lay.k).indices.sort().values
        assert torch.equal(st_.indices[row], want)
    dense = to_chunks(decompress(st_, shape, FIXED), lay)
    expected = torch.zeros_like(dense).scatter_(1, st_.indices, st_.table[st_.codes.long()])
    assert torch.equal(dense, expected)
    support = (dense != 0).sum(1)
    assert bool((support <= lay.k).all())


def test_padding_never_selected_even_against_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    original = torch.topk

    def last_wins_topk(x: torch.Tensor, k: int, dim: int = -1,
                       sorted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        # break ties towards high positions, as another backend might
        values, idx = original(x.flip(dim), k, dim=dim, sorted=sorted)
        return values, x.shape[dim] - 1 - idx

    monkeypatch.setattr(torch, "topk", last_wins_topk)
    st_ = compress(torch.zeros(2, 2053), FIXED)  # ragged: flat 4096-chunks, last holds 10
    assert st_.indices.shape == (2, 10)
    assert int(st_.indices[-1].max()) < 10


def test_indices_strictly_increasing_and_dtypes() -> None:
    st_ = compress(torch.randn(256, 128), FIXED)
    assert st_.indices.dtype == torch.int64
    assert st_.codes.dtype == torch.uint8
    assert st_.table.dtype == torch.float32
    assert st_.table.shape == (4,)
    assert bool((st_.indices.diff(dim=1) > 0).all())
    assert int(st_.codes.max()) <= 3


def test_compress_rejects_integer_tensors_and_dense_spec() -> None:
    with pytest.raises(WrongTypeError):
        compress(torch.ones(64, dtype=torch.int32), FIXED)
    with pytest.raises(CodecMismatchError):
        compress(torch.ones(64), CodecSpec(name="dense"))


def test_compress_accepts_bfloat16() -> None:
    x = torch.randn(64, 64).to(torch.bfloat16)
    assert torch.equal(compress(x, FIXED).indices, compress(x.float(), FIXED).indices)


# --- quantizer ------------------------------------------------------------------------------


def check_quant_bound(values: torch.Tensor) -> None:
    codes, table = quantize(values)
    v = values.double()
    mu, sigma = v.mean(), v.std(correction=0)
    inside = (v - mu).abs() <= 3 * sigma
    err = (v - table.double()[codes.long()]).abs()
    tol = 1e-6 * (mu.abs() + 3 * sigma) + 1e-30
    assert bool((err[inside] <= 1.5 * sigma + tol).all())


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=200))
def test_quantization_error_bound(values: list[float]) -> None:
    check_quant_bound(torch.tensor(values, dtype=torch.float32))


def test_quantization_bound_with_far_outliers() -> None:
    # a lone outlier in an outer bin would drag an unclamped bin mean out of its bin
    values = torch.cat([torch.randn(1000), torch.tensor([-300.0, -20.0])])
    check_quant_bound(values)


def test_quantizer_table_is_bin_means_and_centres() -> None:
    v = torch.tensor([-1.0, -1.0, 1.0, 1.0])  # mu 0, sigma 1: bins 1 and 3 populated
    codes, table = quantize(v)
    assert codes.tolist() == [1, 1, 2, 2]
    assert table.tolist() == [-2.25, -1.0, 1.0, 2.25]


def test_constant_values_decode_to_the_mean() -> None:
    codes, table = quantize(torch.full((64,), 0.5))
    assert table.tolist() == [0.5] * 4
    assert set(codes.tolist()) <= {0, 1, 2, 3}
    _, single = quantize(torch.tensor([-2.0]))
    assert single.tolist() == [-2.0] * 4


# --- payload round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=["fixed12", "gap"])
def test_payload_round_trip_is_bit_exact(spec: CodecSpec) -> None:
    xs = [torch.randn(s) * (i + 1) for i, s in enumerate(SHAPES)]
    sts, payload = round_trip(xs, spec)
    decoded = decode_payload(payload, manifest_of(SHAPES), spec)
    assert len(decoded) == len(SHAPES)
    for a, b, shape in zip(sts, decoded, SHAPES, strict=True):
        assert torch.equal(a.indices, b.indices)
        assert torch.equal(a.codes, b.codes)
        assert torch.equal(a.table, b.table)
        assert torch.equal(decompress(a, shape, spec), decompress(b, shape, spec))
    assert encode_payload(decoded, manifest_of(SHAPES), spec) == payload


shape_strategy = st.one_of(
    st.tuples(st.integers(1, 3).map(lambda n: 64 * n), st.integers(1, 3).map(lambda n: 64 * n)),
    st.tuples(st.integers(1, 300)),
    st.tuples(st.integers(1, 90), st.integers(1, 90)),
    st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 60)),
)


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(shape_strategy, min_size=1, max_size=3), seed=st.integers(0, 2**31),
       gap=st.booleans(), scale=st.floats(1e-6, 1e6), sparse=st.booleans())
def test_round_trip_property(shapes: list[tuple[int, ...]], seed: int, gap: bool,
                             scale: float, sparse: bool) -> None:
    spec = GAP if gap else FIXED
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(s, generator=gen) * scale for s in shapes]
    if sparse:  # many exact zeros and ties
        xs = [torch.where(x.abs() > scale, x, torch.zeros_like(x)).round() for x in xs]
    sts, payload = round_trip(xs, spec)
    decoded = decode_payload(payload, manifest_of(shapes), spec)
    for a, b, shape in zip(sts, decoded, shapes, strict=True):
        assert torch.equal(decompress(a, shape, spec), decompress(b, shape, spec))


# --- figures -------------------------------------------------------------------------------------


def index_bytes(payload_len: int, shapes: list[tuple[int, ...]], spec: CodecSpec) -> int:
    """Payload bytes minus tables, Rice params, values and msgpack headers."""
    entries = [chunk_layout(s, spec).n_entries for s in shapes]
    values = sum(-(-2 * n // 8) for n in entries)
    params = len(shapes) if spec.index_coding == "gap" else 0
    return payload_len - 16 * len(shapes) - params - values - 3 * 4 - 1


def test_gap_coding_bits_per_index_on_gaussian_data() -> None:
    shape = (1024, 1024)  # 256 chunks of 4096, k = 64
    _, payload = round_trip([torch.randn(shape, generator=torch.Generator().manual_seed(1))],
                            GAP)
    per_index = 8 * index_bytes(len(payload), [shape], GAP) / (256 * 64)
    assert 6.5 < per_index < 8.0


SMALL_MODEL = [
    shape
    for _ in range(6)
    for shape in [(512,), (1536, 512), (512, 512), (512,), (3072, 512), (512, 1536)]
] + [(256, 512), (512,)]


def test_small_model_ratio_and_framing_overhead() -> None:
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(s, generator=gen) for s in SMALL_MODEL]
    _, payload = round_trip(xs, FIXED)
    dense = 4 * sum(x.numel() for x in xs)
    sections = sum(
        -(-lay.n_entries * lay.index_bits // 8) + -(-lay.n_entries * 2 // 8)
        for lay in (chunk_layout(s, FIXED) for s in SMALL_MODEL)
    )
    assert len(payload) - sections < 700  # tables (608 bytes) plus framing
    assert dense / len(payload) > 146.1


def test_encode_rejects_count_mismatch() -> None:
    st_ = compress(torch.randn(64), FIXED)
    with pytest.raises(ManifestMismatchError):
        encode_payload([st_], manifest_of([(64,), (64,)]), FIXED)
