from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import canonical
from protocol.errors import (
    DecodeError,
    NonCanonicalError,
    OversizedError,
    ProtocolError,
    TruncatedError,
    WrongTypeError,
)

CAPS = {"max_bytes": 1024, "max_bin_len": 256}

wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=64)
    | st.text(max_size=32),
    lambda children: st.lists(children, max_size=6),
    max_leaves=20,
)  # fmt: skip


@given(wire_values)
@settings(max_examples=200, deadline=None)
def test_round_trip(value: object) -> None:
    assert canonical.unpack(canonical.pack(value), max_bytes=10**6, max_bin_len=10**6) == value


def test_non_canonical_integer_width_is_rejected() -> None:
    wide = b"\xcd\x00\x05"  # uint16 spelling of 5, canonical is one byte
    with pytest.raises(NonCanonicalError):
        canonical.unpack(wide, **CAPS)


def test_truncated_oversized_trailing_and_maps() -> None:
    with pytest.raises(TruncatedError):
        canonical.unpack(canonical.pack([1, b"abc"])[:-1], **CAPS)
    with pytest.raises(OversizedError):
        canonical.unpack(canonical.pack(b"x" * 300), **CAPS)
    with pytest.raises(OversizedError):
        canonical.unpack(b"\x00" * 2000, **CAPS)
    with pytest.raises(DecodeError):
        canonical.unpack(canonical.pack(1) + b"\x00", **CAPS)
    with pytest.raises(DecodeError):
        canonical.unpack(msgpack.packb({"a": 1}), **CAPS)
    with pytest.raises(DecodeError):
        canonical.unpack(b"\xc1", **CAPS)  # reserved byte


def test_expect_helpers_reject_wrong_types() -> None:
    with pytest.raises(WrongTypeError):
        canonical.expect_int(True, "flag")
    with pytest.raises(WrongTypeError):
        canonical.expect_int(-1, "count")
    with pytest.raises(WrongTypeError):
        canonical.expect_bytes("text", "blob")
    with pytest.raises(WrongTypeError):
        canonical.expect_list([1, 2], 3, "pair")
    with pytest.raises(OversizedError):
        canonical.expect_str("x" * 10, "name", max_len=5)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_bytes_give_a_value_or_a_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        canonical.unpack(data, **CAPS)
