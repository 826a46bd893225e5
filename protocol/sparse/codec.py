"""SparseLoCo payload codec: per-chunk top-k, 2-bit values, packed indices.

Payload (canonical msgpack) is one array of four byte strings, T = len(manifest):

    [tables, rice_params, indices, values]

* tables: T x 4 float32 little-endian (16 bytes per tensor, manifest order).
* rice_params: T bytes (one r in 0..15 per tensor) for "gap", empty for "fixed12".
* indices: per-tensor sections concatenated in manifest order, each zero padded
  to a byte. "fixed12": n_chunks*k positions of index_bits bits each, MSB first.
  "gap": ceil(n*k*r/8) bytes of r-bit remainders, then the unary quotient stream
  (q ones then a zero per gap), which ends itself at its n*k-th zero.
* values: per-tensor sections of n_chunks*k 2-bit codes (4 per byte), concatenated.

Section lengths follow from manifest + spec (+ r), so no per-tensor length is
sent: framing for the 38-tensor `small` model is ~12 bytes plus 608 of tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from protocol import canonical
from protocol.errors import (
    CodecMismatchError,
    DuplicateIndexError,
    IndexOutOfRangeError,
    ManifestMismatchError,
    NonCanonicalError,
    NonFiniteValueError,
    OversizedError,
    WrongKError,
    WrongTypeError,
)
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.sparse import bits
from protocol.sparse.layout import ChunkLayout, chunk_layout, chunk_magnitudes, flat_positions
from protocol.sparse.quant import N_LEVELS, dequantize, quantize
from protocol.spec import CodecSpec, Manifest

VALUE_BITS = 2
TABLE_BYTES = 4 * N_LEVELS
_FRAME_SLACK = 64  # msgpack headers of the four-item array


@dataclass(frozen=True)
class SparseTensor:
    """One compressed tensor: `indices` int64 [n_chunks, k] strictly increasing
    per row, `codes` uint8 [n_chunks, k] in 0..3, `table` float32 [4]."""

    indices: torch.Tensor
    codes: torch.Tensor
    table: torch.Tensor


# --- compress / decompress ------------------------------------------------------------


def _check_spec(spec: CodecSpec) -> None:
    if spec.name != "sparseloco":
        raise CodecMismatchError(f"codec {spec.name!r} is not sparseloco")


def compress(x: torch.Tensor, spec: CodecSpec) -> SparseTensor:
    """Top-k by magnitude in every chunk, indices sorted, values 2-bit quantized."""
    _check_spec(spec)
    if not torch.is_floating_point(x):
        raise WrongTypeError(f"expected a floating tensor, got {x.dtype}")
    layout = chunk_layout(tuple(x.shape), spec)
    x = x.detach().to(torch.float32)
    _, picked = torch.topk(chunk_magnitudes(x, layout), layout.k, dim=1, sorted=False)
    indices, _ = torch.sort(picked, dim=1)
    values = x.reshape(-1)[flat_positions(indices, tuple(x.shape), layout)]
    codes, table = quantize(values)
    return SparseTensor(indices=indices, codes=codes, table=table)


def decompress(st: SparseTensor, shape: tuple[int, ...], spec: CodecSpec) -> torch.Tensor:
    """Dense float32 tensor of `shape` on st.indices' device; zeros where not kept.

    `st` must come from `compress` or `decode_payload` (indices already valid).
    """
    layout = chunk_layout(tuple(shape), spec)
    _check_shapes(st, layout)
    # scatter straight into the flat output: no chunk buffer, no permuted copy
    out = torch.zeros(layout.numel, device=st.indices.device)
    positions = flat_positions(st.indices, tuple(shape), layout).reshape(-1)
    out[positions] = dequantize(st.codes, st.table).reshape(-1)
    return out.reshape(shape)


# --- validation shared by encoder and decoder ---------------------------------------------


def _check_shapes(st: SparseTensor, layout: ChunkLayout) -> None:
    want = (layout.n_chunks, layout.k)
    if tuple(st.indices.shape) != want or tuple(st.codes.shape) != want:
        raise WrongKError(f"expected [n_chunks, k] = {list(want)} entries")
    if tuple(st.table.shape) != (N_LEVELS,):
        raise WrongTypeError("table must hold 4 values")


def _check_indices(indices: torch.Tensor, layout: ChunkLayout) -> None:
    """Every position inside the valid part of its chunk, strictly increasing."""
    limit = torch.full((layout.n_chunks,), layout.chunk_len, device=indices.device)
    limit[-1] = layout.last_valid
    if bool((indices.min() < 0) | (indices.max(dim=1).values >= limit).any()):
        raise IndexOutOfRangeError("sparse index outside its chunk")
    steps = indices[:, 1:] - indices[:, :-1]
    if bool((steps == 0).any()):
        raise DuplicateIndexError("sparse index repeated within a chunk")
    if bool((steps < 0).any()):
        raise NonCanonicalError("sparse indices not increasing within a chunk")


def _check_tensor(st: SparseTensor, layout: ChunkLayout) -> None:
    _check_shapes(st, layout)
    if st.indices.dtype != torch.int64 or st.codes.dtype != torch.uint8:
        raise WrongTypeError("indices must be int64 and codes uint8")
    if st.table.dtype != torch.float32:
        raise WrongTypeError("table must be float32")
    if not bool(torch.isfinite(st.table).all()):
        raise NonFiniteValueError("non-finite table value")
    if bool((st.codes >= N_LEVELS).any()):
        raise WrongTypeError("value code outside 0..3")
    _check_indices(st.indices, layout)


# --- index sections -----------------------------------------------------------------------


def _gaps(indices: torch.Tensor) -> torch.Tensor:
    """g0 = p0, gi = pi - p(i-1) - 1 per row."""
    gaps = indices.clone()
    gaps[:, 1:] = indices[:, 1:] - indices[:, :-1] - 1
    return gaps


def _encode_indices(indices: torch.Tensor, layout: ChunkLayout,
                    spec: CodecSpec) -> tuple[bytes, int]:
    """(index section, rice parameter or -1 for fixed coding)."""
    if spec.index_coding == "fixed12":
        return _to_bytes(bits.pack_uint(indices, layout.index_bits)), -1
    gaps = _gaps(indices)
    r = bits.best_rice_param(gaps, layout.chunk_len)
    remainders, unary = bits.rice_encode(gaps, r)
    return _to_bytes(remainders) + _to_bytes(unary), r


def _decode_fixed(section: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    flat = bits.unpack_uint(section, layout.index_bits, layout.n_entries)
    indices = flat.reshape(layout.n_chunks, layout.k)
    _check_indices(indices, layout)
    return indices


def _decode_gap(data: torch.Tensor, offset: int, layout: ChunkLayout,
                r: int) -> tuple[torch.Tensor, int]:
    """Read one tensor's gap section at `offset`; return (indices, next offset)."""
    n = layout.n_entries
    rem_len = bits.packed_len(n, r)
    if offset + rem_len > data.numel():
        raise WrongKError("index section ends inside the Rice remainders")
    remainders = bits.unpack_uint(data[offset : offset + rem_len], r, n)
    offset += rem_len
    bound = bits.rice_bits_bound(layout.k, layout.n_chunks, layout.chunk_len)
    cap = bits.packed_len(max(bound - n * r, 0), 1)
    window = data[offset : offset + cap]
    quotients, used = bits.read_unary(window, n, capped=data.numel() - offset > cap)
    gaps = ((quotients << r) | remainders).reshape(layout.n_chunks, layout.k)
    indices = torch.cumsum(gaps + 1, dim=1) - 1
    _check_indices(indices, layout)
    if bits.best_rice_param(gaps, layout.chunk_len) != r:
        raise NonCanonicalError("Rice parameter is not the optimal one")
    return indices, offset + used


# --- payload --------------------------------------------------------------------------------


def _to_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.detach().to("cpu", torch.uint8).numpy().tobytes())


def _u8(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())


def encode_payload(tensors: Iterable[SparseTensor], manifest: Manifest,
                   spec: CodecSpec) -> bytes:
    """Canonical payload bytes of `tensors` (one per manifest entry, in order). They are
    taken one at a time, so a generator that compresses tensor by tensor keeps only the
    payload's bytes and one tensor in memory."""
    _check_spec(spec)
    tables, params, index_parts, value_parts = [], [], [], []
    count = 0
    for st in tensors:
        if count >= len(manifest):
            raise ManifestMismatchError(f"more tensors than the manifest's {len(manifest)}")
        entry = manifest[count]
        count += 1
        layout = chunk_layout(entry.shape, spec)
        _check_tensor(st, layout)
        section, r = _encode_indices(st.indices, layout, spec)
        index_parts.append(section)
        if r >= 0:
            params.append(r)
        value_parts.append(_to_bytes(bits.pack_uint(st.codes, VALUE_BITS)))
        tables.append(st.table.detach().to("cpu").numpy().astype("<f4").tobytes())
    if count != len(manifest):
        raise ManifestMismatchError(f"{count} tensors for a manifest of {len(manifest)}")
    return canonical.pack(
        [b"".join(tables), bytes(params), b"".join(index_parts), b"".join(value_parts)]
    )


def _index_cap(layout: ChunkLayout, spec: CodecSpec) -> int:
    """Most index bytes a valid tensor can take (exact for fixed coding)."""
    if spec.index_coding == "fixed12":
        return bits.packed_len(layout.n_entries, layout.index_bits)
    # remainders and unary stream are each padded to a byte: at most 2 extra bytes
    return bits.packed_len(bits.rice_bits_bound(layout.k, layout.n_chunks, layout.chunk_len),
                           1) + 1


def _layouts(manifest: Manifest, spec: CodecSpec, limits: Limits) -> list[ChunkLayout]:
    if len(manifest) > limits.max_tensors:
        raise OversizedError(f"{len(manifest)} tensors exceeds cap {limits.max_tensors}")
    if sum(t.numel for t in manifest) > limits.max_elements:
        raise OversizedError("manifest exceeds the element cap")
    return [chunk_layout(t.shape, spec) for t in manifest]


def _caps(layouts: list[ChunkLayout], spec: CodecSpec) -> tuple[int, int]:
    """(most bytes of any one section, most bytes of the whole payload)."""
    n_tensors = len(layouts)
    index_cap = sum(_index_cap(lay, spec) for lay in layouts)
    value_cap = sum(bits.packed_len(lay.n_entries, VALUE_BITS) for lay in layouts)
    bin_cap = max(TABLE_BYTES * n_tensors, index_cap, value_cap)
    return bin_cap, TABLE_BYTES * n_tensors + n_tensors + index_cap + value_cap + _FRAME_SLACK


def payload_cap(manifest: Manifest, spec: CodecSpec) -> int:
    """The most bytes a valid payload for `manifest` can take: exact for fixed-width
    indices, the Rice bound for gap coding (what the decoder enforces, and what a
    miner's bandwidth must carry)."""
    return _caps([chunk_layout(t.shape, spec) for t in manifest], spec)[1]


def _unpack_frame(payload: bytes, layouts: list[ChunkLayout], spec: CodecSpec,
                  limits: Limits) -> list[bytes]:
    """Unpack the four byte strings under caps computed from the manifest."""
    bin_cap, total_cap = _caps(layouts, spec)
    wire = canonical.unpack(payload, max_bytes=min(total_cap, limits.max_envelope_bytes),
                            max_bin_len=bin_cap, max_array_len=16)
    items = canonical.expect_list(wire, 4, "sparse payload")
    return [canonical.expect_bytes(item, f"sparse payload[{i}]") for i, item in enumerate(items)]


def _decode_tables(raw: bytes, n_tensors: int) -> torch.Tensor:
    if len(raw) != TABLE_BYTES * n_tensors:
        raise ManifestMismatchError(f"{len(raw)} table bytes for {n_tensors} tensors")
    tables = torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32))
    if not bool(torch.isfinite(tables).all()):
        raise NonFiniteValueError("non-finite value in a table")
    return tables.reshape(n_tensors, N_LEVELS)


def _decode_params(raw: bytes, n_tensors: int, spec: CodecSpec) -> list[int]:
    want = n_tensors if spec.index_coding == "gap" else 0
    if len(raw) != want:
        raise WrongTypeError(f"{len(raw)} Rice parameter bytes, expected {want}")
    params = list(raw)
    if any(r > bits.MAX_RICE_PARAM for r in params):
        raise CodecMismatchError("Rice parameter above 15")
    return params


@dataclass(frozen=True)
class Frame:
    """A payload's four sections, checked as far as their lengths go: what decoding one
    tensor at a time starts from."""

    layouts: list[ChunkLayout]
    spec: CodecSpec
    tables: torch.Tensor  # [T, 4] float32, finite
    params: list[int]  # one Rice parameter per tensor ("gap"), empty otherwise
    indices: torch.Tensor  # uint8: the index sections, back to back
    values: torch.Tensor  # uint8: the value sections, back to back
    value_offsets: list[int]  # T + 1 offsets into `values`


def open_frame(payload: bytes, manifest: Manifest, spec: CodecSpec,
               limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Unpack and check the frame, tables and section lengths (raises `ProtocolError`)."""
    _check_spec(spec)
    layouts = _layouts(manifest, spec, limits)
    raw_tables, raw_params, raw_indices, raw_values = _unpack_frame(payload, layouts, spec,
                                                                    limits)
    tables = _decode_tables(raw_tables, len(layouts))
    params = _decode_params(raw_params, len(layouts), spec)
    value_sizes = [bits.packed_len(lay.n_entries, VALUE_BITS) for lay in layouts]
    if sum(value_sizes) != len(raw_values):
        raise WrongKError(f"{len(raw_values)} value bytes, expected {sum(value_sizes)}")
    if spec.index_coding == "fixed12":
        want = sum(bits.packed_len(lay.n_entries, lay.index_bits) for lay in layouts)
        if want != len(raw_indices):
            raise WrongKError(f"{len(raw_indices)} index bytes, expected {want}")
    offsets = [0]
    for size in value_sizes:
        offsets.append(offsets[-1] + size)
    return Frame(layouts, spec, tables, params, _u8(raw_indices), _u8(raw_values), offsets)


def read_tensor(frame: Frame, t: int, offset: int) -> tuple[SparseTensor, int]:
    """Decode and validate tensor t, whose index section starts at `offset`; return it and
    where the next index section starts."""
    lay = frame.layouts[t]
    if frame.spec.index_coding == "fixed12":
        end = offset + bits.packed_len(lay.n_entries, lay.index_bits)
        indices = _decode_fixed(frame.indices[offset:end], lay)
    else:
        indices, end = _decode_gap(frame.indices, offset, lay, frame.params[t])
    first, last = frame.value_offsets[t], frame.value_offsets[t + 1]
    codes = bits.unpack_uint(frame.values[first:last], VALUE_BITS, lay.n_entries)
    st = SparseTensor(indices=indices, codes=codes.to(torch.uint8).reshape(lay.n_chunks, lay.k),
                      table=frame.tables[t].clone())
    return st, end


def read_all(frame: Frame) -> Iterator[tuple[int, SparseTensor]]:
    """Every tensor in manifest order with its index offset, one at a time; the index
    sections must end exactly where the last one does."""
    offset = 0
    for t in range(len(frame.layouts)):
        st, end = read_tensor(frame, t, offset)
        yield offset, st
        offset = end
    if offset != frame.indices.numel():
        raise WrongKError("bytes left over after the last index section")


def decode_payload(payload: bytes, manifest: Manifest, spec: CodecSpec,
                   limits: Limits = DEFAULT_LIMITS) -> list[SparseTensor]:
    """Parse and fully validate a payload; raise a `ProtocolError` on any defect.

    Returned tensors are on the CPU. `SparsePayload` (protocol/sparse/view.py) validates
    the same way but keeps only the packed bytes.
    """
    return [st for _, st in read_all(open_frame(payload, manifest, spec, limits))]


def sparse_norm(st: SparseTensor) -> float:
    """L2 norm of a decompressed sparse tensor, reproducible on any hardware: exact
    integer counts of each 2-bit code and the 4-entry table, summed with `math.fsum`."""
    counts = torch.bincount(st.codes.reshape(-1).to(torch.int64), minlength=4).tolist()
    table = [float(v) for v in st.table.tolist()]
    return math.sqrt(math.fsum(c * v * v for c, v in zip(counts, table, strict=True)))
