"""Whole-envelope compression of the `small` model: the figures the design promises.

Byte counts are deterministic, so these are assertions, not benchmarks. The
pseudo-gradient is Gaussian; benchmarks/compression.py measures a trained one.
"""

from __future__ import annotations

import pytest
import torch

from node.engine.model import get_config, param_count, parameter_shapes
from node.outer.optimizers import OuterConfig, SparseLoCo
from protocol.envelope import BaseModel, seal
from protocol.spec import TensorSpec
from tests.support.keys import identity


@pytest.mark.parametrize(("coding", "floor"), [("fixed12", 146.0), ("gap", 190.0)])
def test_small_model_envelope_ratio(coding: str, floor: float) -> None:
    cfg = get_config("small")
    manifest = tuple(TensorSpec(n, s) for n, s in parameter_shapes(cfg))
    gen = torch.Generator().manual_seed(0)
    delta = [torch.randn(t.shape, generator=gen) * 1e-3 for t in manifest]
    outer = SparseLoCo(OuterConfig(index_coding=coding), manifest)  # type: ignore[arg-type]
    wire = seal(identity(0), run_id="covenant-small-run-0001", window=123_456,
                base=BaseModel(step=123_456, digest=b"\xab" * 32), codec=outer.codec,
                manifest=manifest, payload=outer.encode(delta), created_ms=1_800_000_000_000)
    ratio = 4 * param_count(cfg) / len(wire)
    assert ratio >= floor, f"{coding}: {ratio:.2f}x ({len(wire)} bytes)"
