"""Which contributions count in a window, and the θ digest: pure and replayable.

Inputs are the envelopes a node gathered for window w; the rule decides which
count (signed for this run and window, by an allowed signer, decodable, finite;
one per signer, in signer order). The engine then applies them with the run's
outer optimizer (node/outer/optimizers.py). Miners, validators, a catching-up
node and the simulator all go through `select` and the same optimizer, so the
same inputs give bit-identical θ everywhere.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from protocol.dense import decode_dense
from protocol.envelope import Expectation, open_envelope
from protocol.errors import ProtocolError
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.sparse import SparsePayload, SparseTensor, sparse_norm
from protocol.spec import CodecSpec, Manifest


@dataclass(frozen=True)
class Selected:
    signer: bytes
    sha256: bytes  # of the whole envelope: what peers fetch to replay the window
    tensors: Sequence[Any]  # SparsePayload (sparseloco) or list[Tensor] (dense)
    base_digest: bytes = b""  # the θ digest the signer says it trained from


@dataclass(frozen=True)
class Skipped:
    signer: bytes | None
    sha256: bytes
    reason: str


def decode_contribution(payload: bytes, manifest: Manifest, codec: CodecSpec,
                        limits: Limits = DEFAULT_LIMITS) -> Sequence[Any]:
    """A payload's tensors under the run's codec (raises `ProtocolError`): dense tensors,
    or a validated `SparsePayload` that decodes each tensor when it is read."""
    if codec.name == "dense":
        return decode_dense(payload, manifest, limits)
    return SparsePayload(payload, manifest, codec, limits)


def all_finite(tensors: Sequence[Any]) -> bool:
    """Every value finite: sparse norms from exact code counts, dense tensors directly."""
    if isinstance(tensors, SparsePayload):
        return all(math.isfinite(n) for n in tensors.norms)
    return all(math.isfinite(sparse_norm(t)) if isinstance(t, SparseTensor)
               else bool(torch.isfinite(t).all()) for t in tensors)


Decoder = Callable[[bytes], Sequence[Any]]  # payload -> tensors; raises `ProtocolError`


def select(envelopes: Iterable[bytes], expect: Expectation, allowed: set[bytes] | None,
           limits: Limits = DEFAULT_LIMITS, decode: Decoder | None = None
           ) -> tuple[list[Selected], list[Skipped]]:
    """Which envelopes count for this window, in signer order. `decode` replaces the
    codec's decoder (the simulator's study-only outer optimizers; nodes never set it).

    A signer with two different valid envelopes (equivocation) gets none counted:
    peers may have seen different ones, and counting neither keeps them in step.
    """
    by_signer: dict[bytes, list[Selected]] = {}
    skipped: list[Skipped] = []
    for data in envelopes:
        digest = hashlib.sha256(data).digest()
        try:
            env = open_envelope(data, expect, limits)
            tensors = (decode(env.payload) if decode is not None else
                       decode_contribution(env.payload, expect.manifest, expect.codec, limits))
        except ProtocolError as exc:
            skipped.append(Skipped(None, digest, f"{type(exc).__name__}: {exc}"))
            continue
        if allowed is not None and env.signer not in allowed:
            skipped.append(Skipped(env.signer, digest, "signer not in the aggregation set"))
            continue
        if not all_finite(tensors):
            skipped.append(Skipped(env.signer, digest, "non-finite values"))
            continue
        seen = by_signer.setdefault(env.signer, [])
        if all(s.sha256 != digest for s in seen):
            seen.append(Selected(env.signer, digest, tensors, env.header.base.digest))
    chosen: list[Selected] = []
    for signer in sorted(by_signer):
        entries = by_signer[signer]
        if len(entries) == 1:
            chosen.append(entries[0])
        else:
            skipped.extend(Skipped(signer, e.sha256, "equivocation") for e in entries)
    return chosen, skipped


def diverged(own_digest: bytes, own_address: bytes, chosen: Sequence[Selected]) -> int:
    """How many other signers agree on a θ (their envelopes' base) that is not ours:
    0 when ours is among their bases or no base is shared by at least two of them."""
    bases = Counter(c.base_digest for c in chosen if c.signer != own_address)
    if not bases or own_digest in bases:
        return 0
    _, count = bases.most_common(1)[0]
    return count if count >= 2 else 0


def values_at(params: Sequence[torch.Tensor], positions: Sequence[tuple[int, int]]
              ) -> list[float]:
    """θ's fp32 values at (tensor index, flat offset) positions, as Python floats: what
    a base proof (protocol/baseproof.py) hashes, read the same way by miner and validator."""
    return [float(params[t].detach().reshape(-1)[i].to(torch.float32)) for t, i in positions]


def params_digest(params: Sequence[torch.Tensor]) -> bytes:
    """SHA-256 over every parameter's fp32 bytes in order: the θ digest everywhere."""
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.digest()
