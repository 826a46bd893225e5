"""How a tensor is cut into fixed-size chunks for per-chunk top-k.

Rules (see `chunk_layout`):

* 2-D tensor, both dims divisible by `spec.chunk`: chunks are `chunk x chunk`
  blocks (row-major inside a block, blocks in row-major block order), k = spec.k.
* 1-D tensor: chunks of `spec.chunk` elements with the same density as a block,
  k = max(1, spec.k // spec.chunk).
* anything else (ragged 2-D, >= 3-D, 0-d): flattened, chunks of chunk*chunk
  elements, k = spec.k.

The last chunk may be partial (zero padded). k is capped at the valid length of
the shortest (last) chunk so every chunk carries exactly k real positions, and
any position pointing into padding is out of range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from protocol.errors import ManifestMismatchError, WrongTypeError
from protocol.spec import CodecSpec


@dataclass(frozen=True)
class ChunkLayout:
    """Geometry of one tensor's chunks.

    `block` is the side of a 2-D block chunk, or 0 when the tensor is flattened.
    `last_valid` is the number of real (non-padding) elements in the last chunk.
    """

    n_chunks: int
    chunk_len: int
    k: int
    index_bits: int
    numel: int
    last_valid: int
    block: int = 0

    @property
    def n_entries(self) -> int:
        """Number of (index, code) pairs the tensor carries."""
        return self.n_chunks * self.k


def chunk_layout(shape: tuple[int, ...], spec: CodecSpec) -> ChunkLayout:
    """Chunk geometry of a tensor of `shape` under `spec`."""
    if any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in shape):
        raise WrongTypeError(f"bad tensor shape {shape}")
    numel = math.prod(shape)
    side = spec.chunk
    block = 0
    if len(shape) == 2 and shape[0] % side == 0 and shape[1] % side == 0:
        chunk_len, k, block = side * side, spec.k, side
    elif len(shape) == 1:
        chunk_len, k = side, max(1, spec.k // side)
    else:
        chunk_len, k = side * side, spec.k
    n_chunks = -(-numel // chunk_len)
    last_valid = numel - (n_chunks - 1) * chunk_len
    return ChunkLayout(
        n_chunks=n_chunks,
        chunk_len=chunk_len,
        k=min(k, last_valid),
        # chunk lengths are powers of two (spec.chunk is 16/32/64/128)
        index_bits=(chunk_len - 1).bit_length(),
        numel=numel,
        last_valid=last_valid,
        block=block,
    )


def to_chunks(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """View `x` as [n_chunks, chunk_len], zero padding the last chunk."""
    if x.numel() != layout.numel:
        raise ManifestMismatchError(f"tensor has {x.numel()} elements, layout {layout.numel}")
    if layout.block:
        b = layout.block
        rows, cols = x.shape
        blocks = x.reshape(rows // b, b, cols // b, b).permute(0, 2, 1, 3)
        return blocks.reshape(layout.n_chunks, layout.chunk_len)
    pad = layout.n_chunks * layout.chunk_len - layout.numel
    flat = F.pad(x.reshape(-1), (0, pad))
    return flat.reshape(layout.n_chunks, layout.chunk_len)


def from_chunks(chunks: torch.Tensor, shape: tuple[int, ...], layout: ChunkLayout) -> torch.Tensor:
    """Inverse of `to_chunks`: drop padding and restore `shape`."""
    if tuple(chunks.shape) != (layout.n_chunks, layout.chunk_len):
        raise ManifestMismatchError(f"chunk view {tuple(chunks.shape)} does not match layout")
    if math.prod(shape) != layout.numel:
        raise ManifestMismatchError(f"shape {shape} does not match layout")
    if layout.block:
        b = layout.block
        rows, cols = shape
        blocks = chunks.reshape(rows // b, cols // b, b, b).permute(0, 2, 1, 3)
        return blocks.reshape(rows, cols)
    return chunks.reshape(-1)[: layout.numel].reshape(shape)


def chunk_magnitudes(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """|x| in chunk order [n_chunks, chunk_len], padding set to -1 so it never wins.

    One pass over x: abs writes straight into the chunk-ordered buffer instead of
    copying into chunks first and taking abs of the copy.
    """
    if x.numel() != layout.numel:
        raise ManifestMismatchError(f"tensor has {x.numel()} elements, layout {layout.numel}")
    out = torch.empty(layout.n_chunks, layout.chunk_len, dtype=x.dtype, device=x.device)
    if layout.block:
        b = layout.block
        rows, cols = x.shape
        src = x.reshape(rows // b, b, cols // b, b).permute(0, 2, 1, 3)
        torch.abs(src, out=out.view(rows // b, cols // b, b, b))
        return out
    flat = out.view(-1)
    torch.abs(x.reshape(-1), out=flat[: layout.numel])
    flat[layout.numel :] = -1.0
    return out


def flat_positions(indices: torch.Tensor, shape: tuple[int, ...],
                   layout: ChunkLayout) -> torch.Tensor:
    """Row-major flat offsets in the original tensor of chunk positions `indices`."""
    chunk = torch.arange(layout.n_chunks, device=indices.device).unsqueeze(1)
    if not layout.block:
        return chunk * layout.chunk_len + indices
    b = layout.block
    cols = shape[1]
    block_row, block_col = chunk // (cols // b), chunk % (cols // b)
    return (block_row * b + indices // b) * cols + block_col * b + indices % b

