"""Bit packing and Rice coding primitives of the sparse codec."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import NonCanonicalError, OversizedError, WrongKError
from protocol.sparse import bits


def reference_pack(values: list[int], width: int) -> bytes:
    """Plain-Python MSB-first packer to check the vectorized one against."""
    acc = 0
    for v in values:
        acc = (acc << width) | v
    n_bits = len(values) * width
    pad = (-n_bits) % 8
    return (acc << pad).to_bytes((n_bits + pad) // 8, "big") if values else b""


def as_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.numpy().tobytes())


def u8(data: bytes) -> torch.Tensor:
    return torch.tensor(list(data), dtype=torch.uint8)


def test_two_12_bit_values_fill_three_bytes() -> None:
    packed = bits.pack_uint(torch.tensor([0xABC, 0x123]), 12)
    assert as_bytes(packed) == b"\xab\xc1\x23"


def test_four_2_bit_codes_per_byte() -> None:
    packed = bits.pack_uint(torch.tensor([3, 0, 1, 2, 3]), 2)
    assert as_bytes(packed) == bytes([0b11000110, 0b11000000])


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 16), data=st.data())
def test_pack_matches_reference_and_round_trips(width: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.integers(0, (1 << width) - 1), max_size=40))
    packed = bits.pack_uint(torch.tensor(values, dtype=torch.int64), width)
    assert as_bytes(packed) == reference_pack(values, width)
    assert bits.unpack_uint(packed, width, len(values)).tolist() == values


def test_zero_width_is_empty() -> None:
    assert bits.pack_uint(torch.tensor([0, 0, 0]), 0).numel() == 0
    assert bits.unpack_uint(u8(b""), 0, 3).tolist() == [0, 0, 0]


@pytest.mark.parametrize("width", [2, 6, 11, 12])
def test_unpack_rejects_wrong_length(width: int) -> None:
    packed = bits.pack_uint(torch.arange(5), width)
    with pytest.raises(WrongKError):
        bits.unpack_uint(packed[:-1], width, 5)
    with pytest.raises(WrongKError):
        bits.unpack_uint(torch.cat([packed, u8(b"\x00")]), width, 5)


@pytest.mark.parametrize("width", [2, 6, 9, 12])
def test_unpack_rejects_non_zero_padding(width: int) -> None:
    packed = bits.pack_uint(torch.ones(3, dtype=torch.int64), width)  # 3*width % 8 != 0
    packed[-1] |= 1
    with pytest.raises(NonCanonicalError):
        bits.unpack_uint(packed, width, 3)


def test_bitstream_round_trip() -> None:
    stream = torch.tensor([1, 0, 1, 1, 0, 0, 0, 1, 1, 1], dtype=torch.uint8)
    packed = bits.pack_bitstream(stream)
    assert as_bytes(packed) == bytes([0b10110001, 0b11000000])
    assert bits.unpack_bitstream(packed)[:10].tolist() == stream.tolist()


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.integers(0, 5000), min_size=1, max_size=60), r=st.integers(0, 15))
def test_rice_round_trip(gaps: list[int], r: int) -> None:
    g = torch.tensor(gaps, dtype=torch.int64)
    remainders, unary = bits.rice_encode(g, r)
    assert remainders.numel() == bits.packed_len(len(gaps), r)
    assert unary.numel() == bits.packed_len(sum((x >> r) + 1 for x in gaps), 1)
    quotients, used = bits.read_unary(torch.cat([unary, u8(b"\xff")]), len(gaps), capped=False)
    assert used == unary.numel()
    rem = bits.unpack_uint(remainders, r, len(gaps))
    assert ((quotients << r) | rem).tolist() == gaps


@settings(max_examples=40, deadline=None)
@given(gaps=st.lists(st.integers(0, 4095), min_size=1, max_size=80))
def test_best_rice_param_is_the_brute_force_minimum(gaps: list[int]) -> None:
    costs = [sum((g >> r) + 1 + r for g in gaps) for r in range(16)]
    g = torch.tensor(gaps, dtype=torch.int64)
    assert bits.rice_costs(g, 4096).tolist() == costs
    assert bits.best_rice_param(g, 4096) == costs.index(min(costs))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), k=st.integers(1, 64), n_chunks=st.integers(1, 4))
def test_rice_bound_covers_every_valid_chunk_set(data: st.DataObject, k: int,
                                                 n_chunks: int) -> None:
    rows = [sorted(data.draw(st.sets(st.integers(0, 4095), min_size=k, max_size=k)))
            for _ in range(n_chunks)]
    idx = torch.tensor(rows, dtype=torch.int64)
    gaps = idx.clone()
    gaps[:, 1:] = idx[:, 1:] - idx[:, :-1] - 1
    optimal = int(bits.rice_costs(gaps, 4096).min())
    assert optimal <= bits.rice_bits_bound(k, n_chunks, 4096)


def test_read_unary_errors() -> None:
    stream = u8(bytes([0b11010000]))  # codewords 2, 1 then zero padding
    q, used = bits.read_unary(stream, 2, capped=False)
    assert q.tolist() == [2, 1]
    assert used == 1
    with pytest.raises(WrongKError):
        bits.read_unary(u8(b"\xff"), 1, capped=False)
    with pytest.raises(OversizedError):
        bits.read_unary(u8(b"\xff"), 1, capped=True)
    with pytest.raises(NonCanonicalError):
        bits.read_unary(u8(bytes([0b01000000])), 1, capped=False)
