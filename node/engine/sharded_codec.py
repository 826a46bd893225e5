"""SparseLoCo's encoding over FSDP shards: the same payload bytes as one process.

FSDP2 splits each tensor's rows (dim 0) over the ranks. Where every rank's first
row starts a chunk of the tensor's codec layout (64-row bands of 64×64 blocks, or
whole flat chunks), a rank keeps the error feedback of its rows only and picks the
top-k of its own chunks: a chunk never straddles two ranks, so these are exactly
the chunks, indices and values one process picks. The per-tensor 2-bit table needs
every selected value (~1/64 of the tensor): they are gathered, and every rank
quantizes the same vector in chunk order, so table and codes are the single
process's too. Rank 0 assembles the payload from the gathered indices.

A tensor whose shard boundaries do not fall on chunk boundaries (a row count
that does not split into whole bands) is gathered whole and encoded as one
process would, with its error feedback replicated on every rank.

Every method is collective. It never touches the network beyond the ranks' own
process group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from node.outer.aggregate import AggregateStats, clip_scales, scale_values, tensor_norm
from node.outer.optimizers import OuterConfig
from protocol.sparse import (
    ChunkLayout,
    SparseTensor,
    chunk_layout,
    chunk_magnitudes,
    compress,
    decompress,
    dequantize,
    encode_payload,
    flat_positions,
    quantize,
)
from protocol.spec import Manifest


def row_range(rows: int, world: int, rank: int) -> tuple[int, int]:
    """The rows FSDP2 gives `rank` (torch.chunk on dim 0: ceil-sized, the last ranks may
    hold fewer or none)."""
    size = -(-rows // world)
    start = min(rank * size, rows)
    return start, min(start + size, rows)


def _first_chunk(layout: ChunkLayout, shape: tuple[int, ...], row: int) -> int | None:
    """The chunk that starts at `row`, or None when `row` falls inside a chunk."""
    cols = math.prod(shape[1:])
    if layout.block:
        band = layout.block
        return (row // band) * (shape[1] // band) if row % band == 0 else None
    start = row * cols
    return start // layout.chunk_len if start % layout.chunk_len == 0 else None


def shard_layout(layout: ChunkLayout, local_numel: int) -> ChunkLayout:
    """The global layout restricted to one rank's whole chunks: the same geometry and
    the same k (which the tensor's last chunk already bounds)."""
    n_chunks = -(-local_numel // layout.chunk_len)
    last_valid = local_numel - (n_chunks - 1) * layout.chunk_len if n_chunks else 0
    return replace(layout, n_chunks=n_chunks, numel=local_numel, last_valid=last_valid)


class ShardedSparseLoCo:
    """Error feedback + chunked top-k + 2-bit values, each rank on its own rows."""

    def __init__(self, config: OuterConfig, manifest: Manifest, rank: int, world: int,
                 device: torch.device | str) -> None:
        self.codec = config.codec
        self.decay = config.error_decay
        self.manifest = manifest
        self.rank, self.world = rank, world
        self.layouts = [chunk_layout(t.shape, self.codec) for t in manifest]
        self.rows = [row_range(t.shape[0], world, rank) for t in manifest]
        self.sharded = [self._aligned(t.shape, lay) for t, lay in zip(manifest, self.layouts,
                                                                    strict=True)]
        self.error = [torch.zeros(self._local_shape(i), dtype=torch.float32, device=device)
                      for i in range(len(manifest))]

    def _aligned(self, shape: tuple[int, ...], layout: ChunkLayout) -> bool:
        starts = [row_range(shape[0], self.world, r)[0] for r in range(self.world)]
        return all(_first_chunk(layout, shape, s) is not None or s == shape[0] for s in starts)

    def _local_shape(self, i: int) -> tuple[int, ...]:
        shape = tuple(self.manifest[i].shape)
        if not self.sharded[i]:
            return shape
        start, stop = self.rows[i]
        return (stop - start, *shape[1:])

    # --- encoding ---------------------------------------------------------------------------
    def encode(self, delta: Sequence[Tensor]) -> bytes | None:
        """Fold Δ (DTensor shards, or whole tensors) into the error feedback and encode;
        the payload on rank 0, None on the others."""
        out: list[SparseTensor] = []
        for i, d in enumerate(delta):
            err = self.error[i]
            if self.sharded[i]:
                local = d.to_local() if isinstance(d, DTensor) else d
                err.mul_(self.decay).add_(local.to(err.device, torch.float32))
                out.append(self._encode_shard(i, err))
            else:
                whole = d.full_tensor() if isinstance(d, DTensor) else d
                err.mul_(self.decay).add_(whole.to(err.device, torch.float32))
                st = compress(err, self.codec)
                err.sub_(decompress(st, tuple(err.shape), self.codec).to(err.device))
                out.append(st)
        return encode_payload(out, self.manifest, self.codec) if self.rank == 0 else None

    def _encode_shard(self, i: int, err: Tensor) -> SparseTensor:
        layout = shard_layout(self.layouts[i], err.numel())
        shape = tuple(err.shape)
        if layout.n_chunks:
            _, picked = torch.topk(chunk_magnitudes(err, layout), layout.k, dim=1, sorted=False)
            indices, _ = torch.sort(picked, dim=1)
            values = err.reshape(-1)[flat_positions(indices, shape, layout)]
        else:
            indices = torch.zeros(0, self.layouts[i].k, dtype=torch.int64, device=err.device)
            values = torch.zeros(0, self.layouts[i].k, dtype=torch.float32, device=err.device)
        parts = _gather((indices.cpu(), values.detach().cpu()))
        all_values = torch.cat([v.reshape(-1) for _, v in parts])
        codes_all, table = quantize(all_values)  # the single process's vector, in chunk order
        before = sum(v.numel() for _, v in parts[: self.rank])
        mine = codes_all[before:before + values.numel()].reshape(values.shape)
        if layout.n_chunks:
            dense = torch.zeros(err.numel(), dtype=torch.float32, device=err.device)
            dense[flat_positions(indices, shape, layout).reshape(-1)] = dequantize(
                mine.to(err.device), table).reshape(-1)
            err.sub_(dense.reshape(shape))
        all_indices = torch.cat([ix for ix, _ in parts])
        return SparseTensor(indices=all_indices, codes=codes_all.reshape(all_indices.shape),
                            table=table)

    # --- the outer step, this rank's rows only --------------------------------------------
    def aggregate(self, contributions: Sequence[tuple[bytes, Sequence[SparseTensor]]],
                  lr: float) -> tuple[list[Tensor], AggregateStats]:
        """lr × the clip-to-median mean of `contributions` (node/outer/aggregate.py), for
        the rows this rank holds of each sharded tensor (decoding only its chunks) and
        whole for the others; fp32 on the CPU, element for element what one process
        computes."""
        ordered = sorted(contributions, key=lambda item: item[0])
        out: list[Tensor] = []
        clipped = skipped = 0
        for i in range(len(self.manifest)):
            peers = [tensors for _, tensors in ordered]
            norms = [tensor_norm(tensors, i) for tensors in peers]
            shape = self._local_shape(i)
            acc = torch.zeros(shape, dtype=torch.float32)
            used = 0
            for tensors, norm, scale in zip(peers, norms, clip_scales(norms), strict=True):
                if not math.isfinite(norm):
                    skipped += 1
                    continue
                clipped += scale < 1.0
                acc.add_(self._rows_of(i, scale_values(tensors[i], scale)))
                used += 1
            step = acc.div_(used) if used else acc
            out.append(step if lr == 1.0 else step.mul_(lr))
        return out, AggregateStats(peers=len(ordered), clipped=clipped, skipped=skipped)

    def _rows_of(self, i: int, st: SparseTensor) -> Tensor:
        """The dense values of this rank's rows of tensor i (all rows when not sharded)."""
        spec = self.manifest[i]
        if not self.sharded[i]:
            return decompress(st, tuple(spec.shape), self.codec).cpu()
        start, _ = self.rows[i]
        shape = self._local_shape(i)
        layout = shard_layout(self.layouts[i], math.prod(shape))
        first = _first_chunk(self.layouts[i], tuple(spec.shape), start) or 0
        dense = torch.zeros(layout.numel, dtype=torch.float32)
        if layout.n_chunks:
            indices = st.indices[first:first + layout.n_chunks].cpu()
            codes = st.codes[first:first + layout.n_chunks].cpu()
            dense[flat_positions(indices, shape, layout).reshape(-1)] = dequantize(
                codes, st.table.cpu()).reshape(-1)
        return dense.reshape(shape)

    # --- the state a restart keeps -----------------------------------------------------------
    def local_state(self) -> dict[str, Tensor]:
        """The whole error feedback, CPU fp32, keyed as SparseLoCo keys it (collective)."""
        out = {}
        for i, err in enumerate(self.error):
            if self.sharded[i]:
                out[f"error.{i}"] = torch.cat(_gather(err.detach().cpu()))
            else:
                out[f"error.{i}"] = err.detach().to("cpu", copy=True)
        return out

    def load_local_state(self, state: Mapping[str, Tensor]) -> None:
        for i, err in enumerate(self.error):
            saved = state.get(f"error.{i}")
            if saved is None or tuple(saved.shape) != tuple(self.manifest[i].shape):
                continue
            if self.sharded[i]:
                start, stop = self.rows[i]
                saved = saved[start:stop]
            err.copy_(saved)


def _gather(item: object) -> list:  # type: ignore[type-arg]
    parts: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, item)
    return parts
