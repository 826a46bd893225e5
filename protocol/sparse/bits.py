"""Vectorized bit packing and Rice coding on torch tensors (CPU or CUDA).

Bit order is MSB-first everywhere: the first value occupies the high bits of the
first byte, so two 12-bit values fill exactly three bytes. Padding bits up to
the next byte boundary are zero; decoders reject anything else, which keeps one
byte string per value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from protocol.errors import NonCanonicalError, OversizedError, WrongKError

MAX_RICE_PARAM = 15
# one word of `group` values must fit an int64 with room to spare
_MAX_WORD_BITS = 56


def packed_len(count: int, bits: int) -> int:
    """Bytes taken by `count` values of `bits` bits each, padded to a byte."""
    return -(-count * bits // 8)


def _desc(n: int, step: int, device: torch.device) -> torch.Tensor:
    """[step*(n-1), ..., step, 0] as int64 shift amounts."""
    return torch.arange(n - 1, -1, -1, device=device, dtype=torch.int64) * step


def pack_bitstream(bits: torch.Tensor) -> torch.Tensor:
    """Pack a flat 0/1 tensor into uint8 bytes, MSB first, zero padded."""
    flat = bits.reshape(-1).to(torch.int64)
    flat = F.pad(flat, (0, (-flat.numel()) % 8)).reshape(-1, 8)
    return (flat << _desc(8, 1, flat.device)).sum(1).to(torch.uint8)


def unpack_bitstream(data: torch.Tensor) -> torch.Tensor:
    """Expand uint8 bytes into a flat uint8 tensor of 0/1 bits, MSB first."""
    shifts = _desc(8, 1, data.device).to(torch.uint8)
    return ((data.reshape(-1, 1) >> shifts) & 1).reshape(-1)


def pack_uint(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers < 2**bits into uint8 bytes, MSB first."""
    flat = values.reshape(-1).to(torch.int64)
    if bits == 0 or flat.numel() == 0:
        return torch.zeros(0, dtype=torch.uint8, device=values.device)
    group = 8 // math.gcd(bits, 8)
    if bits * group > _MAX_WORD_BITS:
        expanded = (flat.unsqueeze(1) >> _desc(bits, 1, flat.device)) & 1
        return pack_bitstream(expanded)
    # `group` values make a whole number of bytes: build one word per group
    n_bytes = bits * group // 8
    grouped = F.pad(flat, (0, (-flat.numel()) % group)).reshape(-1, group)
    words = (grouped << _desc(group, bits, flat.device)).sum(1)
    out = (words.unsqueeze(1) >> _desc(n_bytes, 8, flat.device)) & 0xFF
    return out.to(torch.uint8).reshape(-1)[: packed_len(flat.numel(), bits)]


def unpack_uint(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack_uint`; the byte length must be exact, padding zero."""
    if data.numel() != packed_len(count, bits):
        raise WrongKError(f"{data.numel()} bytes for {count} values of {bits} bits")
    if bits == 0 or count == 0:
        return torch.zeros(count, dtype=torch.int64, device=data.device)
    group = 8 // math.gcd(bits, 8)
    if bits * group > _MAX_WORD_BITS:
        stream = unpack_bitstream(data).to(torch.int64)
        used = count * bits
        values = (stream[:used].reshape(count, bits) << _desc(bits, 1, data.device)).sum(1)
        padding = stream[used:]
    else:
        n_bytes = bits * group // 8
        raw = data.to(torch.int64)
        raw = F.pad(raw, (0, (-raw.numel()) % n_bytes)).reshape(-1, n_bytes)
        words = (raw << _desc(n_bytes, 8, data.device)).sum(1)
        all_values = (words.unsqueeze(1) >> _desc(group, bits, data.device)) & ((1 << bits) - 1)
        all_values = all_values.reshape(-1)
        # values past `count` are made only of padding bits
        values, padding = all_values[:count], all_values[count:]
    if bool(padding.any()):
        raise NonCanonicalError("non-zero padding bits")
    return values


# --- Rice coding of non-negative gaps -------------------------------------------------


def rice_costs(gaps: torch.Tensor, span: int) -> torch.Tensor:
    """Total bits of Rice-coding `gaps` (all < span) for each r in 0..15.

    Built from a histogram so the cost is O(len + 16*span), not O(16*len).
    """
    flat = gaps.reshape(-1)
    hist = torch.bincount(flat, minlength=span)
    r = torch.arange(MAX_RICE_PARAM + 1, device=flat.device, dtype=torch.int64)
    values = torch.arange(hist.numel(), device=flat.device, dtype=torch.int64)
    quotient_bits = ((values.unsqueeze(0) >> r.unsqueeze(1)) * hist).sum(1)
    return quotient_bits + flat.numel() * (1 + r)


def best_rice_param(gaps: torch.Tensor, span: int) -> int:
    """The r minimizing total bits; ties go to the smallest r (argmin's first)."""
    return int(torch.argmin(rice_costs(gaps, span)).item())


def rice_bits_bound(count_per_chunk: int, n_chunks: int, span: int) -> int:
    """Upper bound on the optimal Rice cost of any valid tensor (remainders included).

    In one chunk the gaps sum to at most span - k, so sum(g >> r) <= (span - k) >> r;
    the optimal r costs no more than this bound taken at its best r.
    """
    n = count_per_chunk * n_chunks
    extra = max(span - count_per_chunk, 0)
    return min(n * (1 + r) + n_chunks * (extra >> r) for r in range(MAX_RICE_PARAM + 1))


def rice_encode(gaps: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (remainder bytes, unary quotient bytes) of `gaps` under parameter r.

    Unary code of q is q ones then a zero; both streams are zero padded.
    """
    flat = gaps.reshape(-1).to(torch.int64)
    remainders = pack_uint(flat & ((1 << r) - 1), r)
    if flat.numel() == 0:
        return remainders, torch.zeros(0, dtype=torch.uint8, device=flat.device)
    terminators = torch.cumsum((flat >> r) + 1, 0) - 1
    total = int(terminators[-1].item()) + 1
    stream = torch.ones(total, dtype=torch.uint8, device=flat.device)
    stream[terminators] = 0
    return remainders, pack_bitstream(stream)


def read_unary(window: torch.Tensor, count: int, *, capped: bool) -> tuple[torch.Tensor, int]:
    """Read `count` unary codewords from the start of `window` (uint8 bytes).

    Returns (quotients, bytes consumed). `capped` says the window was cut at the
    caller's size cap, so running out of codewords means the stream is too long.
    """
    if count == 0:
        return torch.zeros(0, dtype=torch.int64, device=window.device), 0
    stream = unpack_bitstream(window)
    terminators = torch.nonzero(stream == 0).reshape(-1)
    if terminators.numel() < count:
        if capped:
            raise OversizedError("unary quotient stream exceeds its cap")
        raise WrongKError(f"fewer than {count} Rice codewords")
    end = int(terminators[count - 1].item()) + 1
    used = -(-end // 8)
    if bool(stream[end : used * 8].any()):
        raise NonCanonicalError("non-zero padding bits after the unary stream")
    start = torch.full((1,), -1, dtype=torch.int64, device=window.device)
    quotients = torch.diff(terminators[:count], prepend=start) - 1
    return quotients, used
