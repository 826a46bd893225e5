"""Dense fp32 payload codec."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.dense import decode_dense, encode_dense
from protocol.errors import (
    ManifestMismatchError,
    NonFiniteValueError,
    OversizedError,
    ProtocolError,
    TruncatedError,
    WrongTypeError,
)
from protocol.limits import Limits
from protocol.spec import TensorSpec

MANIFEST = (TensorSpec("a", (3, 4)), TensorSpec("b", (5,)), TensorSpec("c", ()))


def tensors() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(t.shape, generator=gen) for t in MANIFEST]


def test_layout_is_concatenated_little_endian_fp32() -> None:
    manifest = (TensorSpec("x", (2,)), TensorSpec("y", (1,)))
    payload = encode_dense([torch.tensor([1.0, -2.0]), torch.tensor([0.5])], manifest)
    assert payload == struct.pack("<3f", 1.0, -2.0, 0.5)


def test_round_trip_is_bit_exact_for_special_values() -> None:
    special = torch.tensor([-0.0, 1e-45, -1e-40, 3.4028235e38, -3.4028235e38])
    xs = [torch.randn(3, 4), special, torch.tensor(7.25)]
    decoded = decode_dense(encode_dense(xs, MANIFEST), MANIFEST)
    for a, b in zip(xs, decoded, strict=True):
        assert b.dtype == torch.float32
        assert b.shape == a.shape
        assert a.view(torch.int32).tolist() == b.view(torch.int32).tolist()


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32),
                       min_size=17, max_size=17))
def test_round_trip_property(values: list[float]) -> None:
    flat = torch.tensor(values, dtype=torch.float32)
    xs = [flat[:12].reshape(3, 4), flat[12:17], flat[16].clone()]
    decoded = decode_dense(encode_dense(xs, MANIFEST), MANIFEST)
    assert torch.equal(torch.cat([d.reshape(-1) for d in decoded]),
                       torch.cat([x.reshape(-1) for x in xs]))


def test_wrong_length() -> None:
    payload = encode_dense(tensors(), MANIFEST)
    with pytest.raises(OversizedError):
        decode_dense(payload + b"\x00", MANIFEST)
    with pytest.raises(TruncatedError):
        decode_dense(payload[:-1], MANIFEST)
    with pytest.raises(TruncatedError):
        decode_dense(b"", MANIFEST)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rejected(bad: float) -> None:
    payload = encode_dense(tensors(), MANIFEST)
    with pytest.raises(NonFiniteValueError):
        decode_dense(payload[:8] + struct.pack("<f", bad) + payload[12:], MANIFEST)
    xs = tensors()
    xs[1][2] = bad
    with pytest.raises(NonFiniteValueError):
        encode_dense(xs, MANIFEST)


@pytest.mark.parametrize("payload", ["text", 3, None])
def test_not_bytes(payload: object) -> None:
    with pytest.raises(WrongTypeError):
        decode_dense(payload, MANIFEST)  # type: ignore[arg-type]


def test_caps_checked_before_allocating() -> None:
    payload = encode_dense(tensors(), MANIFEST)
    with pytest.raises(OversizedError):
        decode_dense(payload, MANIFEST, Limits(max_envelope_bytes=16))
    with pytest.raises(OversizedError):
        decode_dense(payload, MANIFEST, Limits(max_elements=10))
    with pytest.raises(OversizedError):
        decode_dense(payload, MANIFEST, Limits(max_tensors=2))


def test_encoder_checks_manifest() -> None:
    xs = tensors()
    with pytest.raises(ManifestMismatchError):
        encode_dense(xs[:2], MANIFEST)
    with pytest.raises(ManifestMismatchError):
        encode_dense([xs[0].reshape(4, 3), xs[1], xs[2]], MANIFEST)
    with pytest.raises(WrongTypeError):
        encode_dense([xs[0].double(), xs[1], xs[2]], MANIFEST)


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=100))
def test_fuzz(payload: bytes) -> None:
    try:
        decoded = decode_dense(payload, MANIFEST)
    except ProtocolError:
        return
    assert encode_dense(decoded, MANIFEST) == payload
