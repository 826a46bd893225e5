"""Study-only SparseLoCo variants for the sparsity ablation (benchmarks/optimizer_study.py).

* `UnquantisedTopK`: the same error feedback and per-chunk top-k as `SparseLoCo`, but the
  kept values travel as exact fp32 (32 bits each) instead of 2-bit codes, so nothing is
  left behind as quantisation residual. Its payload is `[rice_params, indices, values]`:
  the first two are byte for byte the index part of the SparseLoCo payload for the same
  positions, the third holds every kept value as little-endian fp32 in manifest order,
  chunk order and increasing position.
* `RandomK`: the SparseLoCo payload unchanged (2-bit values, same indices coding), but the
  k positions of each chunk are drawn uniformly at random instead of by magnitude, from a
  generator seeded by (seed, miner, round), so a run replays exactly.

Neither is reachable from `make_outer` or the run spec: the simulator installs them
through `SimConfig.outer` (node/sim/simulate.py). The envelope header still names the
SparseLoCo codec (`CodecSpec` only allows 2-bit values), so an unquantised payload only
decodes through `UnquantisedTopK.decode`, which the simulator hands to `select`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from node.outer.aggregate import AggregateStats, clip_scales
from node.outer.optimizers import (
    Contribution,
    InnerStep,
    OuterConfig,
    OuterOptimizer,
    Place,
    SparseLoCo,
    to_param,
)
from protocol import canonical
from protocol.errors import WrongKError
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.sparse import (
    ChunkLayout,
    SparsePayload,
    SparseTensor,
    chunk_layout,
    chunk_magnitudes,
    decompress,
    encode_payload,
    flat_positions,
    quantize,
)
from protocol.sparse.bits import packed_len
from protocol.spec import CodecSpec, Manifest

SPARSITY_VARIANTS = ("unquantised", "random-k")


def topk_indices(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """Per chunk, the k positions of largest magnitude, sorted (as `compress` picks them)."""
    _, picked = torch.topk(chunk_magnitudes(x, layout), layout.k, dim=1, sorted=False)
    return torch.sort(picked, dim=1).values


def random_indices(layout: ChunkLayout, generator: torch.Generator) -> torch.Tensor:
    """Per chunk, k distinct positions drawn uniformly from the chunk's real (non-padding)
    elements, sorted."""
    scores = torch.rand(layout.n_chunks, layout.chunk_len, generator=generator)
    scores.view(-1)[layout.numel:] = -1.0  # padding of a partial last chunk never wins
    _, picked = torch.topk(scores, layout.k, dim=1, sorted=False)
    return torch.sort(picked, dim=1).values


def dense_from(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, ...],
               layout: ChunkLayout) -> torch.Tensor:
    """A dense fp32 tensor of `shape`: `values` at the chunk positions `indices`, else 0."""
    out = torch.zeros(layout.numel, dtype=torch.float32)
    out[flat_positions(indices, shape, layout).reshape(-1)] = values.reshape(-1)
    return out.reshape(shape)


def round_seed(seed: int, miner: int, round_: int) -> int:
    """A 63-bit generator seed for one miner's round (stable across runs and machines)."""
    digest = hashlib.sha256(f"gradmesh-random-k:{seed}:{miner}:{round_}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# --- unquantised top-k ------------------------------------------------------------------


def encode_unquantised(indices: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
                       manifest: Manifest, codec: CodecSpec) -> bytes:
    """`[rice_params, index sections, fp32 values]`; the index part is what
    `encode_payload` writes for the same positions."""
    dummies = (SparseTensor(idx, torch.zeros(idx.shape, dtype=torch.uint8), torch.zeros(4))
               for idx in indices)
    sparse = encode_payload(dummies, manifest, codec)
    items = canonical.unpack(sparse, max_bytes=len(sparse), max_bin_len=len(sparse))
    params, index_bytes = canonical.expect_list(items, 4, "sparse payload")[1:3]
    flat = torch.cat([v.reshape(-1) for v in values]).to(torch.float32)
    return canonical.pack([params, index_bytes, flat.numpy().astype("<f4").tobytes()])


def decode_unquantised(payload: bytes, manifest: Manifest, codec: CodecSpec,
                       limits: Limits = DEFAULT_LIMITS) -> list[torch.Tensor]:
    """The dense fp32 tensors of an unquantised payload (raises `ProtocolError`); the
    indices are validated by `SparsePayload` exactly as in a SparseLoCo payload."""
    layouts = [chunk_layout(t.shape, codec) for t in manifest]
    items = canonical.unpack(payload, max_bytes=limits.max_envelope_bytes,
                             max_bin_len=limits.max_envelope_bytes, max_array_len=16)
    params, index_bytes, raw = (canonical.expect_bytes(v, "unquantised payload")
                                for v in canonical.expect_list(items, 3, "unquantised payload"))
    entries = [lay.n_entries for lay in layouts]
    if len(raw) != 4 * sum(entries):
        raise WrongKError(f"{len(raw)} value bytes, expected {4 * sum(entries)}")
    codes = bytes(sum(packed_len(n, 2) for n in entries))
    tables = bytes(16 * len(manifest))
    view = SparsePayload(canonical.pack([tables, params, index_bytes, codes]), manifest, codec,
                         limits)
    values = torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32))
    out, start = [], 0
    for t, (spec, lay) in enumerate(zip(manifest, layouts, strict=True)):
        chunk = values[start:start + lay.n_entries]
        out.append(dense_from(view[t].indices, chunk, spec.shape, lay))
        start += lay.n_entries
    return out


def clipped_mean(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Each peer's tensor scaled down to the median L2 norm (norms in float64), then the
    mean in the given (signer) order: `SparseMean`'s rule on dense tensors. Returns the
    mean and how many peers were clipped."""
    norms = [float(torch.linalg.vector_norm(t.to(torch.float64))) for t in tensors]
    acc = torch.zeros_like(tensors[0], dtype=torch.float32)
    used = clipped = 0
    for t, norm, scale in zip(tensors, norms, clip_scales(norms), strict=True):
        if not math.isfinite(norm):
            continue
        clipped += scale < 1.0
        acc.add_(t if scale == 1.0 else (t.to(torch.float64) * scale).to(torch.float32))
        used += 1
    return (acc.div_(used) if used else acc), clipped


class UnquantisedTopK(SparseLoCo):
    """SparseLoCo with the kept values sent as exact fp32 (no 2-bit quantisation)."""

    def encode(self, local: Sequence[torch.Tensor]) -> bytes:
        indices, values = [], []
        for err, delta, spec in zip(self.error, local, self.manifest, strict=True):
            err.mul_(self.config.error_decay).add_(delta.to(err.device, torch.float32))
            layout = chunk_layout(spec.shape, self.codec)
            idx = topk_indices(err, layout)
            positions = flat_positions(idx, spec.shape, layout).reshape(-1)
            flat = err.view(-1)
            values.append(flat[positions].to("cpu", copy=True))
            flat[positions] = 0.0  # sent exactly: nothing of it stays behind
            indices.append(idx.cpu())
        return encode_unquantised(indices, values, self.manifest, self.codec)

    def decode(self, payload: bytes) -> Contribution:
        return decode_unquantised(payload, self.manifest, self.codec, self.limits)

    def apply(self, params: Sequence[torch.Tensor],
              contributions: Sequence[tuple[bytes, Contribution]],
              inner_step: InnerStep, place: Place = to_param) -> AggregateStats:
        ordered = [tensors for _, tensors in sorted(contributions, key=lambda c: c[0])]
        lr, clipped = self.config.effective_lr, 0
        with torch.no_grad():
            for t, p in enumerate(params):
                step, scaled = clipped_mean([peer[t] for peer in ordered])
                clipped += scaled
                p.sub_(place(p, step if lr == 1.0 else step.mul_(lr)))
        return AggregateStats(peers=len(ordered), clipped=clipped, skipped=0)


# --- random-k ---------------------------------------------------------------------------


class RandomK(SparseLoCo):
    """SparseLoCo with k uniformly random positions per chunk instead of the top k; the
    values are 2-bit quantised and error feedback works as in `SparseLoCo`."""

    def __init__(self, config: OuterConfig, manifest: Manifest,
                 limits: Limits = DEFAULT_LIMITS, *, miner: int = 0, seed: int = 0) -> None:
        super().__init__(config, manifest, limits)
        self.miner, self.seed = miner, seed
        self.round = 0  # encodes so far: the window number in a simulated run

    def encode(self, local: Sequence[torch.Tensor]) -> bytes:
        generator = torch.Generator().manual_seed(round_seed(self.seed, self.miner, self.round))
        self.round += 1

        def compressed() -> Iterator[SparseTensor]:
            for err, delta, spec in zip(self.error, local, self.manifest, strict=True):
                err.mul_(self.config.error_decay).add_(delta.to(err.device, torch.float32))
                layout = chunk_layout(spec.shape, self.codec)
                idx = random_indices(layout, generator).to(err.device)
                codes, table = quantize(
                    err.reshape(-1)[flat_positions(idx, spec.shape, layout)])
                st = SparseTensor(indices=idx, codes=codes, table=table)
                err.sub_(decompress(st, spec.shape, self.codec).to(err.device))
                yield st

        return encode_payload(compressed(), self.manifest, self.codec)


def sparsity_variant(name: str, config: OuterConfig, manifest: Manifest,
                     miner: int) -> OuterOptimizer:
    """The study's outer optimizer `name` (one of `SPARSITY_VARIANTS`) for miner `miner`."""
    if name == "unquantised":
        return UnquantisedTopK(config, manifest)
    if name == "random-k":
        return RandomK(config, manifest, miner=miner)
    raise ValueError(f"sparsity variant {name!r} not in {SPARSITY_VARIANTS}")
