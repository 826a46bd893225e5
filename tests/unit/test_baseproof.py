"""The base proof: positions drawn from the payload hash, a hash of θ's values there."""

from __future__ import annotations

import torch

from protocol.baseproof import PROOF_LEN, base_proof, proof_positions
from protocol.spec import TensorSpec

MANIFEST = (TensorSpec("a", (8, 4)), TensorSpec("b", (5,)), TensorSpec("c", (3, 3)))


def test_positions_are_seeded_by_the_payload_and_lie_inside_the_model() -> None:
    a = proof_positions(b"\x01" * 32, MANIFEST, 200)
    assert a == proof_positions(b"\x01" * 32, MANIFEST, 200)
    assert a != proof_positions(b"\x02" * 32, MANIFEST, 200)
    sizes = [32, 5, 9]
    assert all(0 <= t < 3 and 0 <= i < sizes[t] for t, i in a)
    assert {t for t, _ in a} == {0, 1, 2}  # every tensor is reachable
    assert proof_positions(b"\x01" * 32, ()) == []


def test_the_proof_needs_the_exact_values() -> None:
    theta = [torch.randn(s.shape, generator=torch.Generator().manual_seed(i))
             for i, s in enumerate(MANIFEST)]
    h = b"\x05" * 32
    pos = proof_positions(h, MANIFEST)
    values = [float(theta[t].reshape(-1)[i]) for t, i in pos]
    proof = base_proof(h, values)
    assert len(proof) == PROOF_LEN
    assert proof == base_proof(h, list(values))
    nudged = [values[0] + 1e-6, *values[1:]]
    assert base_proof(h, nudged) != proof  # one fp32 ulp-scale change breaks it
    assert base_proof(b"\x06" * 32, values) != proof  # bound to the payload
