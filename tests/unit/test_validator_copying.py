"""Copy detection: identical payloads and top-k position overlap."""

from __future__ import annotations

import numpy as np
import torch

from node.engine.model import build_model, get_config, model_manifest
from protocol.sparse import SparseTensor, compress
from protocol.spec import CodecSpec
from validator.copying import detect_copies, detect_stale_copies, fingerprint, overlap

SPEC = CodecSpec()
MANIFEST = model_manifest(build_model(get_config("tiny"), seed=0))


def _update(seed: int, base: list[torch.Tensor] | None = None, noise: float = 1.0
            ) -> tuple[list[torch.Tensor], list[SparseTensor]]:
    gen = torch.Generator().manual_seed(seed)
    dense = [torch.randn(s.shape, generator=gen) * noise for s in MANIFEST]
    if base is not None:
        dense = [b + d for b, d in zip(base, dense, strict=True)]
    return dense, [compress(d, SPEC) for d in dense]


def test_independent_updates_do_not_overlap_copies_do() -> None:
    dense_a, a = _update(1)
    _, b = _update(2)
    _, c = _update(3, dense_a, noise=0.05)  # a copy plus small noise
    pa = fingerprint(1, 0, b"a", a, MANIFEST, SPEC)
    pb = fingerprint(2, 1, b"b", b, MANIFEST, SPEC)
    pc = fingerprint(3, 2, b"c", c, MANIFEST, SPEC)
    pd = fingerprint(4, 3, b"a", a, MANIFEST, SPEC)  # the same payload, re-signed
    assert overlap(pa.positions, pb.positions) < 0.1
    assert overlap(pa.positions, pc.positions) > 0.4
    flags = detect_copies([pd, pc, pb, pa], 0.4)
    assert sorted(flags) == [3, 4]
    assert flags[4].identical
    assert flags[4].original == 1
    assert flags[3].original == 1


def test_subsampled_fingerprint_estimates_overlap() -> None:
    dense_a, a = _update(1)
    _, c = _update(3, dense_a, noise=0.05)
    full = overlap(fingerprint(1, 0, b"", a, MANIFEST, SPEC).positions,
                   fingerprint(3, 1, b"", c, MANIFEST, SPEC).positions)
    sub = overlap(fingerprint(1, 0, b"", a, MANIFEST, SPEC, 8).positions,
                  fingerprint(3, 1, b"", c, MANIFEST, SPEC, 8).positions)
    assert abs(full - sub) < 0.1
    assert overlap(np.zeros(0, np.int64), np.arange(3)) == 0.0


def test_copies_of_earlier_windows_are_flagged_own_history_is_not() -> None:
    dense_a, a = _update(1)  # miner 1's contribution in window w-1
    _, b = _update(2)  # miner 2, honest, window w
    _, c = _update(3, dense_a, noise=0.05)  # miner 3 in w: miner 1's w-1 update plus noise
    old = [fingerprint(1, 0, b"a", a, MANIFEST, SPEC), fingerprint(2, 1, b"b-old", b, MANIFEST,
                                                                   SPEC)]
    now = [fingerprint(2, 0, b"b", b, MANIFEST, SPEC),  # the same positions as its own w-1
           fingerprint(3, 1, b"c", c, MANIFEST, SPEC),
           fingerprint(4, 2, b"a", a, MANIFEST, SPEC)]  # miner 1's w-1 payload, re-signed
    flags = detect_stale_copies(now, old, 0.4)
    assert sorted(flags) == [3, 4]
    assert flags[4].identical
    assert flags[4].original == 1
    assert flags[4].stale is False
    assert flags[3].original == 1
    assert not flags[3].identical
    assert detect_copies(now[:2], 0.4) == {}  # within the window alone: no copy
