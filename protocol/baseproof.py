"""Proof that a contribution's author holds the base model it names.

The header's `base.digest` is public (window records carry it), so naming the
current θ proves nothing. The proof reads θ_base at a few positions drawn from
the contribution's own payload hash and hashes the values: it can only be
computed after the payload exists and only by someone holding θ_base. A
validator recomputes it from its θ_global (`node`'s engine reads the values).
It proves possession at sealing time, not that training started from θ_base.
Pure: inputs in, bytes out, no torch, the same on every machine.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import struct
from collections.abc import Sequence

from protocol.spec import Manifest

# SparseLoCo steps touch a few percent of θ per window: with 256 positions a stale θ
# (off by one step that changed ≥ 5% of entries) matches by chance with p < 2e-6
PROOF_POSITIONS = 256
PROOF_LEN = 32
_DOMAIN = b"gradmesh/base-proof/1"


def proof_positions(payload_hash: bytes, manifest: Manifest,
                    count: int = PROOF_POSITIONS) -> list[tuple[int, int]]:
    """`count` positions of θ as (tensor index, flat offset), drawn from the payload hash
    over every element of the model uniformly (repeats allowed)."""
    sizes = [math.prod(t.shape) for t in manifest]
    ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    total = ends[-1] if ends else 0
    if total == 0:
        return []
    out = []
    for i in range(count):
        draw = hashlib.sha256(_DOMAIN + payload_hash + i.to_bytes(4, "big")).digest()
        flat = int.from_bytes(draw[:8], "big") % total
        tensor = bisect.bisect_right(ends, flat)
        out.append((tensor, flat - (ends[tensor - 1] if tensor else 0)))
    return out


def base_proof(payload_hash: bytes, values: Sequence[float]) -> bytes:
    """SHA-256 over the payload hash and θ_base's fp32 values at `proof_positions`."""
    packed = struct.pack(f"<{len(values)}f", *values)
    return hashlib.sha256(_DOMAIN + payload_hash + packed).digest()
