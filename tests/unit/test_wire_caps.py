"""Wire caps derived from the run's manifest (`limits_for`), and a 1B-shaped
contribution through the wire tensor by tensor (benchmarks/wire_scale.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from node.engine.model import get_config, parameter_shapes
from protocol.envelope import BaseModel, Expectation, limits_for, open_envelope, seal
from protocol.errors import OversizedError
from protocol.limits import DEFAULT_LIMITS
from protocol.sparse import compress, encode_payload
from protocol.spec import CodecSpec, TensorSpec
from tests.support.keys import identity

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "wire_scale.py"
CODEC = CodecSpec("sparseloco", 64, 64, 2, "gap")


def _manifest(model: str) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(n, s, "float32") for n, s in parameter_shapes(get_config(model)))


def test_the_cap_fits_every_valid_envelope_and_nothing_much_larger() -> None:
    manifest = _manifest("tiny")
    limits = limits_for(manifest, CODEC)
    gen = torch.Generator().manual_seed(1)
    payload = encode_payload([compress(torch.randn(t.shape, generator=gen), CODEC)
                              for t in manifest], manifest, CODEC)
    wire = seal(identity(1), run_id="r", window=0, base=BaseModel(0, bytes(32)), codec=CODEC,
                manifest=manifest, payload=payload)
    expect = Expectation("r", 0, CODEC, manifest)
    assert open_envelope(wire, expect, limits).payload == payload
    assert len(wire) <= limits.max_envelope_bytes < 2 * len(wire)
    with pytest.raises(OversizedError):
        open_envelope(wire + bytes(limits.max_envelope_bytes), expect, limits)


def test_a_72b_run_gets_room_the_fixed_cap_did_not_give() -> None:
    cap = limits_for(_manifest("72b"), CODEC).max_envelope_bytes
    assert cap > 1.2 * 2**30 > DEFAULT_LIMITS.max_envelope_bytes
    dense = limits_for(_manifest("tiny"), CodecSpec("dense", 64, 64, 2, "fixed12"))
    assert dense.max_envelope_bytes > 4 * sum(t.numel for t in _manifest("tiny"))


def test_a_1b_contribution_round_trips_in_bounded_memory() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--model", "1b"], capture_output=True,
                         text=True, timeout=600, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(out.stdout.splitlines()[0])
    assert r["tensors_decoded"] == len(_manifest("1b"))
    assert r["envelope_bytes"] <= r["envelope_cap"]
    assert r["compression_ratio"] > 200
    # one tensor at a time: far below the whole Δ (the embedding alone is 250 MiB)
    assert r["peak_extra_mib"] < r["dense_fp32_mib"] / 3
