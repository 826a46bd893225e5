"""Cheap checks: every bad envelope becomes a typed Rejection, never a crash."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib

import pytest
import torch

from node.engine.model import build_model, get_config, model_manifest
from protocol.envelope import BaseModel, Expectation, seal
from protocol.sparse import compress, encode_payload
from protocol.spec import CodecSpec
from tests.support.keys import identity
from validator.checks import CheckContext, check_contribution, check_window, scale_check
from validator.errors import (
    EnvelopeRejected,
    LateArrival,
    MalformedPayload,
    Rejection,
    ReplayRejected,
    ScaleRejected,
    Uncommitted,
    UnknownSigner,
)
from validator.source import Arrival

SPEC = CodecSpec()
MANIFEST = model_manifest(build_model(get_config("tiny"), seed=0))
BASE = BaseModel(0, bytes(32))


def _payload(scale: float = 1.0, seed: int = 0) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    sts = [compress(torch.randn(s.shape, generator=gen) * scale, SPEC) for s in MANIFEST]
    return encode_payload(sts, MANIFEST, SPEC)


def _wire(n: int, window: int = 3, payload: bytes | None = None) -> bytes:
    return seal(identity(n), run_id="r", window=window, base=BASE, codec=SPEC,
                manifest=MANIFEST, payload=_payload() if payload is None else payload)


def _ctx() -> CheckContext:
    return CheckContext(Expectation("r", 3, SPEC, MANIFEST),
                        {identity(1).address: 1, identity(2).address: 2}, deadline=10.0)


def test_good_contribution_is_accepted() -> None:
    item = check_contribution(Arrival(_wire(1), 1.0, 0), _ctx())
    assert item.uid == 1
    assert item.norm > 0


@pytest.mark.parametrize(("data", "at", "error"), [
    (b"\x00garbage", 1.0, EnvelopeRejected),
    (b"", 1.0, EnvelopeRejected),
    (None, 11.0, LateArrival),
])
def test_rejections(data: bytes | None, at: float, error: type[Rejection]) -> None:
    with pytest.raises(error):
        check_contribution(Arrival(_wire(1) if data is None else data, at, 0), _ctx())


def test_unregistered_replay_and_malformed() -> None:
    with pytest.raises(UnknownSigner):
        check_contribution(Arrival(_wire(9), 1.0, 0), _ctx())
    with pytest.raises(ReplayRejected):
        check_contribution(Arrival(_wire(1, window=2), 1.0, 0), _ctx())
    with pytest.raises(MalformedPayload):
        check_contribution(Arrival(_wire(1, payload=b"\x94" + bytes(50)), 1.0, 0), _ctx())


def test_tampered_bytes_never_crash() -> None:
    good = bytearray(_wire(1))
    for i in range(0, len(good), max(1, len(good) // 300)):
        bad = bytearray(good)
        bad[i] ^= 0x5A
        with contextlib.suppress(Rejection):  # anything else fails the test
            check_contribution(Arrival(bytes(bad), 1.0, 0), _ctx())


def test_window_attribution_and_first_wins() -> None:
    arrivals = [Arrival(_wire(1, window=2), 0.0, 0), Arrival(_wire(1), 1.0, 1),
                Arrival(_wire(2, payload=_payload(seed=5)), 1.0, 2), Arrival(b"junk", 1.0, 3)]
    accepted, refused = check_window(arrivals, _ctx())
    assert sorted(accepted) == [1, 2]
    assert [r.signer for r in refused] == [identity(1).address, None]


def test_only_envelopes_committed_in_time_count() -> None:
    """Two-phase publication: the author's envelope matches its commitment; a relay's
    re-signed copy (arriving first) has none, or only the author's digest copied."""
    author = _wire(1)
    copy = _wire(2, payload=_payload())  # the same payload, re-signed by uid 2
    committed = {identity(1).address: hashlib.sha256(author).digest()}
    for theirs in ({}, {identity(2).address: hashlib.sha256(author).digest()}):
        ctx = dataclasses.replace(_ctx(), committed={**committed, **theirs})
        accepted, refused = check_window([Arrival(copy, 0.5, 0), Arrival(author, 1.0, 1)], ctx)
        assert sorted(accepted) == [1]
        assert [(r.signer, type(r.error)) for r in refused] == [
            (identity(2).address, Uncommitted)]
    # no commit phase: both count here (copy detection decides later)
    accepted, _ = check_window([Arrival(copy, 0.5, 0), Arrival(author, 1.0, 1)], _ctx())
    assert sorted(accepted) == [1, 2]


def test_equivocation_is_judged_before_commitments() -> None:
    first, second = _wire(1), _wire(1, payload=_payload(seed=9))
    ctx = dataclasses.replace(_ctx(), committed={identity(1).address: hashlib.sha256(
        first).digest()})
    accepted, refused = check_window([Arrival(first, 1.0, 0), Arrival(second, 1.0, 1)], ctx)
    assert accepted == {}  # neither counts, as in the miners' `select`
    assert [r.error.reason for r in refused] == ["equivocation"]


def test_scale_check() -> None:
    arrivals = [Arrival(_wire(n, payload=_payload(scale=s, seed=n)), 1.0, n)
                for n, s in ((1, 1.0), (2, 1.1))]
    ctx = CheckContext(Expectation("r", 3, SPEC, MANIFEST),
                       {identity(n).address: n for n in (1, 2, 3, 4)}, deadline=10.0)
    extra = [Arrival(_wire(3, payload=_payload(scale=20.0, seed=3)), 1.0, 3),
             Arrival(_wire(4, payload=_payload(scale=0.0, seed=4)), 1.0, 4)]
    accepted, _ = check_window(arrivals + extra, ctx)
    kept, rejected = scale_check(accepted, 5.0)
    assert sorted(kept) == [1, 2]
    assert all(isinstance(e, ScaleRejected) for e in rejected.values())
    assert sorted(rejected) == [3, 4]
