"""Every defect of a sparse payload raises its own ProtocolError subclass; fuzzing
never produces any other exception. Every test runs against both decoders: the eager
`decode_payload` and the lazy `SparsePayload` (validated at construction)."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol.sparse as sparse
from protocol import canonical
from protocol.errors import (
    CodecMismatchError,
    DuplicateIndexError,
    IndexOutOfRangeError,
    ManifestMismatchError,
    NonCanonicalError,
    NonFiniteValueError,
    OversizedError,
    ProtocolError,
    WrongKError,
    WrongTypeError,
)
from protocol.limits import Limits
from protocol.sparse import SparsePayload, bits, chunk_layout, compress, encode_payload
from protocol.spec import CodecSpec, TensorSpec


def decode_payload(*args: object, **kwargs: object) -> list[sparse.SparseTensor]:
    return DECODER(*args, **kwargs)  # type: ignore[operator]


DECODER: object = sparse.decode_payload


@pytest.fixture(autouse=True, params=["eager", "lazy"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    lazy = lambda *a, **k: list(SparsePayload(*a, **k))  # noqa: E731
    monkeypatch.setitem(globals(), "DECODER",
                        sparse.decode_payload if request.param == "eager" else lazy)


FIXED = CodecSpec(index_coding="fixed12")
GAP = CodecSpec(index_coding="gap")
# a ragged tensor (last chunk 1808 long), a 1-D one (3 chunks of 64, k = 1)
SHAPES = [(100, 100), (192,)]
MANIFEST = tuple(TensorSpec(f"t{i}", s) for i, s in enumerate(SHAPES))


def parts(spec: CodecSpec, seed: int = 0) -> list[bytes]:
    gen = torch.Generator().manual_seed(seed)
    sts = [compress(torch.randn(s, generator=gen), spec) for s in SHAPES]
    return list(canonical.unpack(encode_payload(sts, MANIFEST, spec), max_bytes=1 << 30,
                                 max_bin_len=1 << 30))


def frame(items: list[bytes]) -> bytes:
    return canonical.pack(items)


def fixed_indices(rows: list[list[int]], width: int) -> bytes:
    return bytes(bits.pack_uint(torch.tensor(rows), width).numpy().tobytes())


def with_indices(spec: CodecSpec, first_tensor_rows: list[list[int]]) -> bytes:
    """Valid fixed12 payload whose first tensor's indices are replaced."""
    items = parts(spec)
    second = items[2][-bits.packed_len(3, 6):]
    items[2] = fixed_indices(first_tensor_rows, 12) + second
    return frame(items)


def valid_rows() -> list[list[int]]:
    return [list(range(0, 128, 2)) for _ in range(3)]


@pytest.mark.parametrize("spec", [FIXED, GAP], ids=["fixed12", "gap"])
def test_valid_payload_decodes(spec: CodecSpec) -> None:
    assert len(decode_payload(frame(parts(spec)), MANIFEST, spec)) == 2


# --- framing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", ["text", 7, None, [b""] * 4])
def test_payload_not_bytes(payload: object) -> None:
    with pytest.raises(WrongTypeError):
        decode_payload(payload, MANIFEST, FIXED)  # type: ignore[arg-type]


@pytest.mark.parametrize("n_items", [0, 3, 5])
def test_wrong_arity(n_items: int) -> None:
    with pytest.raises(WrongTypeError):
        decode_payload(frame([b""] * n_items), MANIFEST, FIXED)


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_wrong_item_type(position: int) -> None:
    items: list[object] = list(parts(FIXED))
    items[position] = 5
    with pytest.raises(WrongTypeError):
        decode_payload(canonical.pack(items), MANIFEST, FIXED)


def test_non_canonical_msgpack() -> None:
    tables, _, indices, values = parts(FIXED)
    # spell the empty rice bin as bin16 instead of bin8
    bad = (b"\x94" + canonical.pack(tables) + b"\xc5\x00\x00" + canonical.pack(indices)
           + canonical.pack(values))
    assert decode_payload(bad.replace(b"\xc5\x00\x00", b"\xc4\x00", 1), MANIFEST, FIXED)
    with pytest.raises(NonCanonicalError):
        decode_payload(bad, MANIFEST, FIXED)


def test_dense_spec_rejected() -> None:
    with pytest.raises(CodecMismatchError):
        decode_payload(frame(parts(FIXED)), MANIFEST, CodecSpec(name="dense"))


def test_tensor_count_mismatch() -> None:
    bigger = (*MANIFEST, TensorSpec("extra", (64,)))
    with pytest.raises(ManifestMismatchError):
        decode_payload(frame(parts(FIXED)), bigger, FIXED)


def test_oversized_section_rejected_before_use() -> None:
    items = parts(FIXED)
    items[2] += bytes(100_000)
    with pytest.raises(OversizedError):
        decode_payload(frame(items), MANIFEST, FIXED)


def test_envelope_cap_from_limits() -> None:
    with pytest.raises(OversizedError):
        decode_payload(frame(parts(FIXED)), MANIFEST, FIXED, Limits(max_envelope_bytes=100))


def test_manifest_caps_from_limits() -> None:
    with pytest.raises(OversizedError):
        decode_payload(frame(parts(FIXED)), MANIFEST, FIXED, Limits(max_tensors=1))
    with pytest.raises(OversizedError):
        decode_payload(frame(parts(FIXED)), MANIFEST, FIXED, Limits(max_elements=1000))


# --- sections ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [FIXED, GAP], ids=["fixed12", "gap"])
@pytest.mark.parametrize("position", [2, 3])
def test_short_section_is_wrong_k(spec: CodecSpec, position: int) -> None:
    items = parts(spec)
    items[position] = items[position][:-1]
    with pytest.raises(WrongKError):
        decode_payload(frame(items), MANIFEST, spec)


@pytest.mark.parametrize("spec", [FIXED, GAP], ids=["fixed12", "gap"])
def test_long_value_section_is_wrong_k(spec: CodecSpec) -> None:
    items = parts(spec)
    items[3] += b"\x00"
    with pytest.raises(WrongKError):
        decode_payload(frame(items), MANIFEST, spec)


def test_trailing_bytes_after_gap_sections_are_wrong_k() -> None:
    items = parts(GAP)
    items[2] += b"\x00"
    with pytest.raises(WrongKError):
        decode_payload(frame(items), MANIFEST, GAP)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_table(bad: float) -> None:
    items = parts(FIXED)
    items[0] = items[0][:20] + struct.pack("<f", bad) + items[0][24:]
    with pytest.raises(NonFiniteValueError):
        decode_payload(frame(items), MANIFEST, FIXED)


def test_value_padding_bits_must_be_zero() -> None:
    items = parts(FIXED)  # the 1-D tensor's 3 codes leave 2 padding bits
    items[3] = items[3][:-1] + bytes([items[3][-1] | 1])
    with pytest.raises(NonCanonicalError):
        decode_payload(frame(items), MANIFEST, FIXED)


def test_fixed_index_padding_bits_must_be_zero() -> None:
    items = parts(FIXED)  # the 1-D tensor's 3 six-bit indices leave 6 padding bits
    items[2] = items[2][:-1] + bytes([items[2][-1] | 1])
    with pytest.raises(NonCanonicalError):
        decode_payload(frame(items), MANIFEST, FIXED)


def test_crafted_valid_fixed_indices_decode() -> None:
    decoded = decode_payload(with_indices(FIXED, valid_rows()), MANIFEST, FIXED)
    assert decoded[0].indices.tolist() == valid_rows()


def test_duplicate_fixed_index() -> None:
    rows = valid_rows()
    rows[1][5] = rows[1][4]
    with pytest.raises(DuplicateIndexError):
        decode_payload(with_indices(FIXED, rows), MANIFEST, FIXED)


def test_decreasing_fixed_index() -> None:
    rows = valid_rows()
    rows[0][3], rows[0][4] = rows[0][4], rows[0][3]
    with pytest.raises(NonCanonicalError):
        decode_payload(with_indices(FIXED, rows), MANIFEST, FIXED)


def test_fixed_index_in_padding_is_out_of_range() -> None:
    rows = valid_rows()
    rows[2][-1] = 1808  # last chunk holds 10000 - 8192 = 1808 real elements
    with pytest.raises(IndexOutOfRangeError):
        decode_payload(with_indices(FIXED, rows), MANIFEST, FIXED)


# --- gap coding -----------------------------------------------------------------------------------


def gap_section(rows: list[list[int]], r: int) -> bytes:
    idx = torch.tensor(rows)
    gaps = idx.clone()
    gaps[:, 1:] = idx[:, 1:] - idx[:, :-1] - 1
    rem, unary = bits.rice_encode(gaps, r)
    return bytes(rem.numpy().tobytes()) + bytes(unary.numpy().tobytes())


def with_gap_rows(rows: list[list[int]], r: int | None = None) -> bytes:
    """Valid gap payload whose first tensor's section is rebuilt from `rows`."""
    items = parts(GAP)
    lay = chunk_layout(SHAPES[0], GAP)
    original = decode_payload(frame(items), MANIFEST, GAP)[0].indices.tolist()
    first_len = len(gap_section(original, items[1][0]))
    rest = items[2][first_len:]
    if r is None:
        idx = torch.tensor(rows)
        gaps = idx.clone()
        gaps[:, 1:] = idx[:, 1:] - idx[:, :-1] - 1
        r = bits.best_rice_param(gaps, lay.chunk_len)
    items[1] = bytes([r]) + items[1][1:]
    items[2] = gap_section(rows, r) + rest
    return frame(items)


def test_crafted_valid_gap_rows_decode() -> None:
    decoded = decode_payload(with_gap_rows(valid_rows()), MANIFEST, GAP)
    assert decoded[0].indices.tolist() == valid_rows()


def test_gap_position_in_padding_is_out_of_range() -> None:
    rows = valid_rows()
    rows[2][-1] = 2000
    with pytest.raises(IndexOutOfRangeError):
        decode_payload(with_gap_rows(rows), MANIFEST, GAP)


def test_gap_rice_param_above_15() -> None:
    items = parts(GAP)
    items[1] = bytes([16]) + items[1][1:]
    with pytest.raises(CodecMismatchError):
        decode_payload(frame(items), MANIFEST, GAP)


def test_gap_non_optimal_rice_param() -> None:
    with pytest.raises(NonCanonicalError):
        decode_payload(with_gap_rows(valid_rows(), r=3), MANIFEST, GAP)


def test_rice_params_present_under_fixed_coding() -> None:
    items = parts(FIXED)
    items[1] = bytes([5, 5])
    with pytest.raises(WrongTypeError):
        decode_payload(frame(items), MANIFEST, FIXED)


def test_gap_fewer_codewords() -> None:
    items = parts(GAP)
    items[2] = items[2][:10]
    with pytest.raises(WrongKError):
        decode_payload(frame(items), MANIFEST, GAP)


def test_gap_unary_stream_over_cap() -> None:
    items = parts(GAP)
    items[1] = bytes([0]) + items[1][1:]
    lay = chunk_layout(SHAPES[0], GAP)
    # the first tensor's unary cap at r = 0 is 1530 bits (192 bytes); the index bin
    # itself (195 bytes) stays under the framing cap, so the unary cap must catch it
    cap_bits = bits.rice_bits_bound(lay.k, lay.n_chunks, lay.chunk_len)
    assert bits.packed_len(cap_bits, 1) == 192
    items[2] = b"\xff" * 195
    with pytest.raises(OversizedError, match="unary"):
        decode_payload(frame(items), MANIFEST, GAP)


def test_gap_unary_padding_bits_must_be_zero() -> None:
    items = parts(GAP)  # last tensor: 3 codewords, its unary stream ends mid-byte
    # with k = 1 every gap is the position itself
    last = decode_payload(frame(items), MANIFEST, GAP)[1].indices.reshape(-1).tolist()
    r = items[1][1]
    unary_bits = sum((g >> r) + 1 for g in last)
    if unary_bits % 8 == 0:
        pytest.skip("stream happens to end on a byte boundary")
    items[2] = items[2][:-1] + bytes([items[2][-1] | 1])
    with pytest.raises(NonCanonicalError):
        decode_payload(frame(items), MANIFEST, GAP)


# --- encoder-side validation ---------------------------------------------------------------


def test_encoder_refuses_invalid_tensors() -> None:
    good = compress(torch.randn(100, 100), FIXED)
    bad_idx = good.indices.clone()
    bad_idx[0, 1] = bad_idx[0, 0]
    from protocol.sparse import SparseTensor

    manifest = MANIFEST[:1]
    with pytest.raises(DuplicateIndexError):
        encode_payload([SparseTensor(bad_idx, good.codes, good.table)], manifest, FIXED)
    with pytest.raises(WrongKError):
        encode_payload([SparseTensor(good.indices[:, :5], good.codes, good.table)], manifest,
                       FIXED)
    nan_table = torch.tensor([0.0, float("nan"), 0.0, 0.0])
    with pytest.raises(NonFiniteValueError):
        encode_payload([SparseTensor(good.indices, good.codes, nan_table)], manifest, FIXED)


# --- fuzz ---------------------------------------------------------------------------------------


def decode_or_protocol_error(payload: bytes, spec: CodecSpec) -> None:
    try:
        decoded = decode_payload(payload, MANIFEST, spec)
    except ProtocolError:
        return
    assert encode_payload(decoded, MANIFEST, spec) == payload  # accepted means canonical


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=300), gap=st.booleans())
def test_fuzz_random_bytes(payload: bytes, gap: bool) -> None:
    decode_or_protocol_error(payload, GAP if gap else FIXED)


VALID = {"fixed12": frame(parts(FIXED, seed=3)), "gap": frame(parts(GAP, seed=3))}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(coding=st.sampled_from(["fixed12", "gap"]), data=st.data())
def test_fuzz_mutations_of_a_valid_payload(coding: str, data: st.DataObject) -> None:
    payload = bytearray(VALID[coding])
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(payload) - 1, 0)))
        if kind == "flip" and payload:
            payload[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and payload:
            payload[pos] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del payload[pos:]
        elif kind == "insert":
            payload[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif payload:
            del payload[pos : pos + data.draw(st.integers(1, 8))]
    decode_or_protocol_error(bytes(payload), CodecSpec(index_coding=coding))  # type: ignore[arg-type]
