"""Copy detection: identical payloads and overlapping top-k positions.

Two honest miners train on different data from the same θ, so their chosen
positions overlap far less than a copy's (measured on `tiny`: see
tests/unit/test_validator_copying.py and the report). The later announcer
(arrival order on this validator) of a flagged pair is the copier.

Copies also cross windows: a re-signed copy of another miner's contribution
from an earlier window overlaps nothing current, so each window is also
compared with the fingerprints of the last few windows (`detect_stale_copies`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protocol.sparse import SparseTensor, chunk_layout, flat_positions
from protocol.spec import CodecSpec, Manifest

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: a fixed hash for position sampling


@dataclass(frozen=True)
class Fingerprint:
    uid: int
    order: int
    payload_hash: bytes
    positions: np.ndarray  # sorted unique int64 positions (a fixed hashed subsample)


@dataclass(frozen=True)
class CopyFlag:
    uid: int
    original: int
    overlap: float
    identical: bool
    stale: bool = False  # the original is from an earlier window


def flag_when(flag: CopyFlag) -> str:
    return " in an earlier window" if flag.stale else ""


def fingerprint(uid: int, order: int, payload_hash: bytes, tensors: Sequence[SparseTensor],
                manifest: Manifest, spec: CodecSpec, sample_mod: int = 1) -> Fingerprint:
    """Global positions of the update; keep those whose hash is 0 mod `sample_mod`."""
    parts: list[np.ndarray] = []
    offset = 0
    for st, tspec in zip(tensors, manifest, strict=True):
        layout = chunk_layout(tuple(tspec.shape), spec)
        pos = flat_positions(st.indices, tuple(tspec.shape), layout).reshape(-1).numpy()
        parts.append(pos.astype(np.int64) + offset)
        offset += layout.numel
    allpos = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    if sample_mod > 1:
        mixed = (allpos.astype(np.uint64) * np.uint64(_MIX)) >> np.uint64(40)
        allpos = allpos[mixed % np.uint64(sample_mod) == 0]
    return Fingerprint(uid, order, payload_hash, allpos)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0 or b.size == 0:
        return 0.0
    shared = np.intersect1d(a, b, assume_unique=True).size
    return shared / min(a.size, b.size)


def repeats(later: Fingerprint, earlier: Fingerprint, threshold: float) -> CopyFlag | None:
    """`later` as a copy of `earlier`: an identical payload, or position overlap at or
    above `threshold`; None when it is neither."""
    if later.payload_hash == earlier.payload_hash:
        return CopyFlag(later.uid, earlier.uid, 1.0, True)
    ov = overlap(later.positions, earlier.positions)
    return CopyFlag(later.uid, earlier.uid, ov, False) if ov >= threshold else None


def detect_copies(prints: Sequence[Fingerprint], threshold: float = 0.4) -> dict[int, CopyFlag]:
    """Flag every print that repeats an earlier one (identical payload, or position
    overlap >= threshold); earlier = lower arrival order, ties by uid."""
    ordered = sorted(prints, key=lambda p: (p.order, p.uid))
    flags: dict[int, CopyFlag] = {}
    for j, later in enumerate(ordered):
        originals = (e for e in ordered[:j] if e.uid not in flags)  # compare with originals
        flag = next((f for e in originals if (f := repeats(later, e, threshold))), None)
        if flag is not None:
            flags[later.uid] = flag
    return flags


def detect_stale_copies(prints: Sequence[Fingerprint], earlier: Sequence[Fingerprint],
                        threshold: float = 0.4) -> dict[int, CopyFlag]:
    """Flag every current print that repeats another miner's print from an earlier
    window (identical payload, or position overlap >= threshold). A miner's own earlier
    windows never count against it."""
    flags: dict[int, CopyFlag] = {}
    for now in sorted(prints, key=lambda p: p.uid):
        others = (old for old in earlier if old.uid != now.uid)
        flag = next((f for old in others if (f := repeats(now, old, threshold))), None)
        if flag is not None:
            flags[now.uid] = flag
    return flags


def pairwise_overlaps(prints: Sequence[Fingerprint]) -> dict[tuple[int, int], float]:
    """Every pair's overlap (for reports and tests)."""
    out: dict[tuple[int, int], float] = {}
    for i, a in enumerate(prints):
        for b in prints[i + 1:]:
            out[(a.uid, b.uid)] = overlap(a.positions, b.positions)
    return out
