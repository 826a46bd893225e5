"""Cheap checks, run on every envelope before any model evaluation.

Order: envelope (framing, signature, run, window, codec, manifest, payload
hash: `protocol.envelope.open_envelope`), registered signer, arrival time,
payload decode (indices in range, exactly k per chunk, finite tables), one
envelope per signer, the signer's on-chain commitment (two-phase publication),
then the window-relative scale check. Each failure is a typed `Rejection`; when the
signature verified, the rejection names the signer so it can be slashed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from node.outer.aggregate import median, tensor_norm
from protocol.envelope import Expectation, Header, open_envelope, read_unverified
from protocol.errors import (
    NonFiniteValueError,
    ProtocolError,
    ReplayError,
)
from protocol.identity import keccak256, recover_signer
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.sparse import SparsePayload, SparseTensor
from validator.errors import (
    EnvelopeRejected,
    Equivocation,
    LateArrival,
    MalformedPayload,
    NonFiniteUpdate,
    Rejection,
    ReplayRejected,
    ScaleRejected,
    Uncommitted,
    UnknownSigner,
)
from validator.source import Arrival


@dataclass(frozen=True)
class CheckContext:
    expect: Expectation
    miners: Mapping[bytes, int]  # 20-byte address -> uid
    deadline: float  # last acceptable arrival time (validator clock)
    limits: Limits = DEFAULT_LIMITS
    # two-phase publication: signer -> sha256 of the envelope it committed to in time
    # (None: the run publishes without commitments)
    committed: Mapping[bytes, bytes] | None = None


@dataclass(frozen=True)
class Accepted:
    uid: int
    signer: bytes
    header: Header
    payload_hash: bytes
    tensors: Sequence[SparseTensor]  # a SparsePayload: each tensor decoded when read
    norm: float
    arrival: Arrival


@dataclass(frozen=True)
class Refused:
    signer: bytes | None  # None: the signature did not verify, nobody to blame
    error: Rejection
    arrival: Arrival


def _claimed_signer(data: bytes, limits: Limits) -> bytes | None:
    """The envelope's signer when its signature verifies (without any other check)."""
    try:
        header, signature, _ = read_unverified(data, limits)
        signer = recover_signer(keccak256(header.encode()), signature)
    except ProtocolError:
        return None
    return signer if signer == header.signer else None


def update_norm(tensors: Sequence[SparseTensor]) -> float:
    return math.sqrt(math.fsum(tensor_norm(tensors, t) ** 2 for t in range(len(tensors))))


def check_contribution(arrival: Arrival, ctx: CheckContext) -> Accepted:
    """Accept one envelope or raise a `Rejection` (never anything else)."""
    try:
        envelope = open_envelope(arrival.data, ctx.expect, ctx.limits)
    except ReplayError as exc:
        raise ReplayRejected(str(exc)) from exc
    except ProtocolError as exc:
        raise EnvelopeRejected(f"{type(exc).__name__}: {exc}") from exc
    uid = ctx.miners.get(envelope.signer)
    if uid is None:
        raise UnknownSigner(f"0x{envelope.signer.hex()} is not a registered miner")
    if not arrival.at <= ctx.deadline:
        raise LateArrival(f"arrived at {arrival.at:.3f}, deadline {ctx.deadline:.3f}")
    try:
        tensors = SparsePayload(envelope.payload, ctx.expect.manifest, ctx.expect.codec,
                                ctx.limits)
    except NonFiniteValueError as exc:
        raise NonFiniteUpdate(str(exc)) from exc
    except ProtocolError as exc:
        raise MalformedPayload(f"{type(exc).__name__}: {exc}") from exc
    norm = update_norm(tensors)
    if not math.isfinite(norm):
        raise NonFiniteUpdate("update norm is not finite")
    return Accepted(uid=uid, signer=envelope.signer, header=envelope.header,
                    payload_hash=hashlib.sha256(envelope.payload).digest(), tensors=tensors,
                    norm=norm, arrival=arrival)


def check_window(arrivals: Sequence[Arrival], ctx: CheckContext
                 ) -> tuple[dict[int, Accepted], list[Refused]]:
    """Check every arrival; one envelope per miner counts. A re-broadcast of the same
    envelope is ignored (it must not hurt its signer); two different valid envelopes
    signed by one miner are an `Equivocation`, and neither counts. With two-phase
    publication an envelope counts only if its signer committed to it in time
    (`Uncommitted`): equivocation is judged first, over every validly signed envelope,
    as the miners' `select` does."""
    accepted: dict[int, Accepted] = {}
    refused: list[Refused] = []
    equivocated: set[int] = set()
    for arrival in sorted(arrivals, key=lambda a: a.order):
        try:
            item = check_contribution(arrival, ctx)
        except Rejection as exc:
            refused.append(Refused(_claimed_signer(arrival.data, ctx.limits), exc, arrival))
            continue
        first = accepted.setdefault(item.uid, item)
        if first.payload_hash != item.payload_hash and item.uid not in equivocated:
            equivocated.add(item.uid)
            refused.append(Refused(item.signer, Equivocation(
                "two different envelopes signed for this window"), arrival))
    for uid in equivocated:
        del accepted[uid]
    for uid, item in list(accepted.items()):
        if ctx.committed is not None and ctx.committed.get(item.signer) != hashlib.sha256(
                item.arrival.data).digest():
            refused.append(Refused(item.signer, Uncommitted(
                "no commitment to this envelope before the release block"), item.arrival))
            del accepted[uid]
    return accepted, refused


def scale_check(accepted: Mapping[int, Accepted], factor: float
                ) -> tuple[dict[int, Accepted], dict[int, Rejection]]:
    """Reject zero updates and norms outside [median/factor, median·factor] of the window."""
    kept: dict[int, Accepted] = {}
    rejected: dict[int, Rejection] = {}
    nonzero = [a.norm for a in accepted.values() if a.norm > 0.0]
    ref = median(nonzero) if nonzero else 0.0
    for uid, item in accepted.items():
        if item.norm == 0.0:
            rejected[uid] = ScaleRejected("zero update")
        elif item.norm > ref * factor or item.norm < ref / factor:
            rejected[uid] = ScaleRejected(f"norm {item.norm:.4g} vs window median {ref:.4g}")
        else:
            kept[uid] = item
    return kept, rejected
