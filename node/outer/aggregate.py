"""Deterministic aggregation of peers' contributions (pure functions).

Every honest peer must compute bit-identical θ from the same set of
contributions, whatever order they arrived in: contributions are sorted by
signer address, per-peer norms are computed in float64 from integer counts and
the 4-entry value table (no order-dependent float reductions), and the mean is
accumulated elementwise in that fixed order.

`sparse_norm` lives in protocol/sparse (a validated `SparsePayload` carries it); it is
imported here for the callers that took it from this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from protocol.sparse import SparsePayload, SparseTensor, decompress, sparse_norm
from protocol.spec import CodecSpec, Manifest


@dataclass(frozen=True)
class AggregateStats:
    peers: int
    clipped: int  # peer-tensor pairs scaled down to the median norm
    skipped: int  # peer-tensor pairs dropped as non-finite


def tensor_norm(tensors: Sequence[SparseTensor], t: int) -> float:
    """`sparse_norm` of tensors[t]; a `SparsePayload` answers from its validation pass
    without decoding the tensor again."""
    if isinstance(tensors, SparsePayload):
        return tensors.norms[t]
    return sparse_norm(tensors[t])


def scale_values(st: SparseTensor, scale: float) -> SparseTensor:
    """`st` with every value times `scale`: the 4-entry table is scaled in float64 and
    rounded to float32 once, so every value scales exactly alike on any hardware."""
    table = (st.table.to(torch.float64) * scale).to(torch.float32)
    return SparseTensor(indices=st.indices, codes=st.codes, table=table)


def median_norms(updates: Sequence[Sequence[SparseTensor]]) -> list[float]:
    """Per tensor, the median of the finite norms over `updates` (0.0 when none is)."""
    out = []
    for t in range(len(updates[0]) if updates else 0):
        finite = [n for n in (tensor_norm(u, t) for u in updates) if math.isfinite(n)]
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


class SparseMean:
    """Per tensor in manifest order: each peer clipped to the median L2 norm, then the
    mean over peers, in signer order. Iterating yields one dense fp32 tensor at a time
    and decodes each peer's tensor only while it is added, so a caller that applies
    each tensor before taking the next holds one dense tensor beyond θ. `stats` counts
    what the iterations so far clipped and skipped."""

    def __init__(self, contributions: Sequence[tuple[bytes, Sequence[SparseTensor]]],
                 manifest: Manifest, spec: CodecSpec,
                 device: torch.device | str = "cpu") -> None:
        self._ordered = [tensors for _, tensors in sorted(contributions, key=lambda c: c[0])]
        self._manifest, self._spec, self._device = manifest, spec, device
        self.clipped = self.skipped = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        for t, tensor_spec in enumerate(self._manifest):
            yield self._mean(t, tensor_spec.shape)

    def _mean(self, t: int, shape: tuple[int, ...]) -> torch.Tensor:
        norms = [tensor_norm(tensors, t) for tensors in self._ordered]
        acc = torch.zeros(shape, dtype=torch.float32, device=self._device)
        used = 0
        for tensors, norm, scale in zip(self._ordered, norms, clip_scales(norms), strict=True):
            if not math.isfinite(norm):
                self.skipped += 1
                continue
            self.clipped += scale < 1.0
            st = scale_values(tensors[t], scale)
            acc.add_(decompress(st, shape, self._spec).to(self._device))
            used += 1
        return acc.div_(used) if used else acc

    @property
    def stats(self) -> AggregateStats:
        return AggregateStats(peers=len(self._ordered), clipped=self.clipped,
                              skipped=self.skipped)


def aggregate_sparse(
    contributions: Sequence[tuple[bytes, Sequence[SparseTensor]]],
    manifest: Manifest,
    spec: CodecSpec,
    device: torch.device | str = "cpu",
) -> tuple[list[torch.Tensor], AggregateStats]:
    """Every tensor of `SparseMean` at once, with its stats."""
    mean = SparseMean(contributions, manifest, spec, device)
    return list(mean), mean.stats


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
