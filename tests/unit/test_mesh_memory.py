"""The in-memory mesh's fault injection, the announcement wire form and the address allowlist."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from node.mesh import (
    LOOPBACK,
    AddressNotAllowedError,
    AddressPolicy,
    Announcement,
    BadAnnouncementError,
    BadRecordError,
    FetchTimeoutError,
    MemoryNetwork,
    NoSourceError,
    RecordKey,
)
from node.mesh.base import sha256
from node.mesh.records import open_record, seal_record
from tests.support.keys import identity


def _ann(n: int = 1, **overrides: object) -> Announcement:
    fields: dict[str, object] = {
        "run": "r", "window": 3, "blob_sha256": sha256(b"x"), "size": 1,
        "peer_id": "p", "addrs": ("/ip4/127.0.0.1/tcp/1",),
    }
    fields.update(overrides)
    return Announcement.create(identity(n), **fields)  # type: ignore[arg-type]


def test_announcement_round_trips_and_rejects_tampering() -> None:
    ann = _ann()
    assert Announcement.decode(ann.encode()) == ann
    wire = bytearray(ann.encode())
    wire[5] ^= 1
    with pytest.raises(BadAnnouncementError):
        Announcement.decode(bytes(wire))
    forged = Announcement(**{**ann.__dict__, "announcer": identity(2).address})
    with pytest.raises(BadAnnouncementError):
        Announcement.decode(forged.encode())
    with pytest.raises(BadAnnouncementError):
        Announcement.decode(b"\xc1garbage")
    with pytest.raises(BadAnnouncementError):
        Announcement.decode(b"\x00" * 10_000)
    assert len(ann.encode()) < 400


def test_record_seal_and_open() -> None:
    key = RecordKey("r", 1, identity(1).address)
    assert open_record(key, seal_record(identity(1), key, b"v", 4)) == (4, b"v")
    with pytest.raises(BadRecordError):
        seal_record(identity(2), key, b"v")
    other = RecordKey("r", 2, identity(1).address)
    with pytest.raises(BadRecordError):
        open_record(other, seal_record(identity(1), key, b"v"))
    assert RecordKey.from_path(key.path()) == key
    for bad in ("/gradmesh/r/x/00", "/other/r/1/" + "00" * 20, "gradmesh/r/1/" + "00" * 20):
        with pytest.raises(BadRecordError):
            RecordKey.from_path(bad)


async def _pair(net: MemoryNetwork) -> tuple:  # type: ignore[type-arg]
    a, b, c = (net.node(identity(i)) for i in (1, 2, 3))
    for m in (a, b, c):
        await m.start()
    return a, b, c


async def test_corrupt_source_is_skipped_for_an_honest_one() -> None:
    net = MemoryNetwork()
    a, b, c = await _pair(net)
    blob = os.urandom(1000)
    ann_a = await a.announce(1, blob)
    await b.announce(1, blob)
    net.set_fault(a.peer_id, "corrupt")
    assert await c.fetch(ann_a, timeout=1) == blob
    net.set_fault(b.peer_id, "refuse")
    fresh = net.node(identity(9))
    await fresh.start()
    with pytest.raises(NoSourceError) as info:
        await fresh.fetch(ann_a, timeout=1)
    assert "HashMismatchError" in info.value.failures[a.peer_id]


async def test_stalled_source_costs_only_the_timeout() -> None:
    net = MemoryNetwork()
    a, _, c = await _pair(net)
    ann = await a.announce(1, b"blob")
    net.set_fault(a.peer_id, "stall")
    started = time.monotonic()
    with pytest.raises(FetchTimeoutError):
        await c.fetch(ann, timeout=0.2)
    assert time.monotonic() - started < 1.0
    net.set_fault(a.peer_id, None)
    assert await c.fetch(ann, timeout=1) == b"blob"


async def test_subscription_ends_when_the_mesh_stops() -> None:
    net = MemoryNetwork()
    a, b, _ = await _pair(net)
    stream = b.subscribe()
    await a.announce(2, b"one")
    async with asyncio.timeout(5):
        got = await anext(stream)
        assert got.window == 2
        await b.stop()
        with pytest.raises(StopAsyncIteration):
            await anext(stream)


@pytest.mark.parametrize("addr", [
    "/ip4/127.0.0.1/tcp/4001", "/ip4/127.9.9.9/tcp/1/p2p/QmPeer",
    "/ip4/127.0.0.1/tcp/1/p2p/QmRelay/p2p-circuit/p2p/QmTarget",
])
def test_loopback_policy_allows(addr: str) -> None:
    assert LOOPBACK.check(addr) == addr


@pytest.mark.parametrize("addr", [
    "/ip4/0.0.0.0/tcp/4001", "/ip4/10.0.0.1/tcp/4001", "/ip4/192.168.1.2/tcp/1",
    "/ip4/8.8.8.8/tcp/53", "/ip6/::1/tcp/1", "/dns4/localhost/tcp/1",
    "/dnsaddr/bootstrap.libp2p.io",
    "/ip4/10.0.0.1/tcp/1/p2p/QmRelay/p2p-circuit/p2p/QmTarget", "/ip4/127.0.0.1/udp/1/quic-v1",
    "ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp", "/ip4/127.0.0.1/bogus/1", "",
])
def test_loopback_policy_refuses(addr: str) -> None:
    with pytest.raises(AddressNotAllowedError):
        LOOPBACK.check(addr)


def test_policy_for_a_namespace_network() -> None:
    policy = AddressPolicy.of(["10.10.0.0/16"])
    policy.check("/ip4/10.10.1.2/tcp/4001")
    with pytest.raises(AddressNotAllowedError):
        policy.check("/ip4/127.0.0.1/tcp/4001")
    assert policy.filter(["/ip4/10.10.0.5/tcp/1", "/ip4/1.1.1.1/tcp/1"]) == ["/ip4/10.10.0.5/tcp/1"]
