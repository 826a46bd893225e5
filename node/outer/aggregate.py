"""Deterministic aggregation of peers' contributions (pure functions).

Every honest peer must compute bit-identical θ from the same set of
contributions, whatever order they arrived in: contributions are sorted by
signer address, per-peer norms are computed in float64 from integer counts and
the 4-entry value table (no order-dependent float reductions), and the mean is
accumulated elementwise in that fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from protocol.sparse import SparseTensor, decompress
from protocol.spec import CodecSpec, Manifest


@dataclass(frozen=True)
class AggregateStats:
    peers: int
    clipped: int  # peer-tensor pairs scaled down to the median norm
    skipped: int  # peer-tensor pairs dropped as non-finite


def sparse_norm(st: SparseTensor) -> float:
    """L2 norm of a decompressed sparse tensor, reproducible on any hardware."""
    counts = torch.bincount(st.codes.reshape(-1).to(torch.int64), minlength=4).tolist()
    table = [float(v) for v in st.table.tolist()]
    return math.sqrt(math.fsum(c * v * v for c, v in zip(counts, table, strict=True)))


def scale_values(st: SparseTensor, scale: float) -> SparseTensor:
    """`st` with every value times `scale`: the 4-entry table is scaled in float64 and
    rounded to float32 once, so every value scales exactly alike on any hardware."""
    table = (st.table.to(torch.float64) * scale).to(torch.float32)
    return SparseTensor(indices=st.indices, codes=st.codes, table=table)


def median_norms(updates: Sequence[Sequence[SparseTensor]]) -> list[float]:
    """Per tensor, the median of the finite norms over `updates` (0.0 when none is)."""
    out = []
    for t in range(len(updates[0]) if updates else 0):
        finite = [n for n in (sparse_norm(u[t]) for u in updates) if math.isfinite(n)]
        out.append(median(finite) if finite else 0.0)
    return out


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2.0


def clip_scales(norms: Sequence[float]) -> list[float]:
    """Scale per peer so that no one's norm exceeds the median of the finite norms."""
    finite = [n for n in norms if math.isfinite(n)]
    if not finite:
        return [0.0] * len(norms)
    cap = median(finite)
    return [0.0 if not math.isfinite(n) else (1.0 if n <= cap or n == 0.0 else cap / n)
            for n in norms]


def aggregate_sparse(
    contributions: Sequence[tuple[bytes, Sequence[SparseTensor]]],
    manifest: Manifest,
    spec: CodecSpec,
    device: torch.device | str = "cpu",
) -> tuple[list[torch.Tensor], AggregateStats]:
    """Per tensor: clip each peer to the median L2 norm, then mean over peers."""
    ordered = sorted(contributions, key=lambda item: item[0])
    out: list[torch.Tensor] = []
    clipped = skipped = 0
    for t, tensor_spec in enumerate(manifest):
        peers = [tensors[t] for _, tensors in ordered]
        norms = [sparse_norm(st) for st in peers]
        scales = clip_scales(norms)
        acc = torch.zeros(tensor_spec.shape, dtype=torch.float32, device=device)
        used = 0
        for st, norm, scale in zip(peers, norms, scales, strict=True):
            if not math.isfinite(norm):
                skipped += 1
                continue
            clipped += scale < 1.0
            acc.add_(decompress(scale_values(st, scale), tensor_spec.shape, spec).to(device))
            used += 1
        out.append(acc.div_(used) if used else acc)
    return out, AggregateStats(peers=len(ordered), clipped=clipped, skipped=skipped)


def aggregate_mean(
    contributions: Sequence[tuple[bytes, Sequence[torch.Tensor]]],
) -> list[torch.Tensor]:
    """Plain mean in signer order (dense DiLoCo and the DDP baseline)."""
    ordered = sorted(contributions, key=lambda item: item[0])
    if not ordered:
        raise ValueError("nothing to aggregate")
    acc = [t.detach().to(torch.float32).clone() for t in ordered[0][1]]
    for _, tensors in ordered[1:]:
        for a, t in zip(acc, tensors, strict=True):
            a.add_(t)
    return [a.div_(len(ordered)) for a in acc]
