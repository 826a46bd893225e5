"""One contract, two implementations: the in-memory mesh and the libp2p mesh on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from node.mesh import (
    BadRecordError,
    BlobTooLargeError,
    FetchError,
    MemoryNetwork,
    Mesh,
    MeshError,
    MeshStateError,
    RecordKey,
)
from node.mesh.base import sha256
from node.mesh.errors import DialError, FetchTimeoutError, MeshTimeoutError
from tests.support.keys import identity
from tests.support.mesh import Cluster, Collector, announce_until_seen, wait_until


@pytest.fixture(params=["memory", "p2p"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    if request.param == "p2p":
        pytest.importorskip("libp2p")
    c = Cluster(request.param)
    try:
        yield c
    finally:
        await c.close()


async def lone_node(cluster: Cluster) -> Any:
    """A started node that dialled nobody (a p2p one has no bootstrap)."""
    ident = identity(cluster._next_key)
    cluster._next_key += 1
    if cluster.kind == "memory":
        mesh: Any = cluster.network.node(ident, cluster.run)
    else:
        from node.mesh.p2p import P2PConfig, P2PMesh

        mesh = P2PMesh(ident, P2PConfig(run=cluster.run))
    await mesh.start()
    cluster.nodes.append(mesh)
    return mesh


def ghost_peer_id(cluster: Cluster, n: int) -> str:
    """The peer id of a node that exists nowhere on the network (never started)."""
    if cluster.kind == "memory":
        return str(cluster.network.node(identity(n), cluster.run).peer_id)
    from node.mesh.p2p import P2PConfig, P2PMesh

    return P2PMesh(identity(n), P2PConfig(run=cluster.run)).peer_id


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 TCP port that is bound but not listening: a dial there is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A 127.0.0.1 TCP port whose kernel completes the handshake and nobody ever answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_implements_protocol(cluster: Cluster) -> None:
    (node,) = await cluster.add(1)
    assert isinstance(node, Mesh)
    assert node.address == identity(100).address
    assert node.peer_id
    assert node.listen_addrs
    assert node.dial_addrs
    for addr in node.dial_addrs:
        assert addr.endswith(f"/p2p/{node.peer_id}"), addr
        if cluster.kind == "p2p":
            assert addr.startswith("/ip4/127.0.0.1/tcp/"), addr  # loopback only


def test_timeout_errors_are_builtin_timeouts() -> None:
    assert issubclass(MeshTimeoutError, MeshError)
    assert issubclass(MeshTimeoutError, TimeoutError)
    assert issubclass(FetchTimeoutError, FetchError)
    assert issubclass(FetchTimeoutError, MeshTimeoutError)
    err = FetchTimeoutError("no source in time", {"peer": "stalled"})
    assert str(err) == "no source in time"
    assert err.failures == {"peer": "stalled"}
    assert err.errno is None  # OSError's two-argument form must not kick in


async def test_connect_to_a_dial_address_connects(cluster: Cluster) -> None:
    (a,) = await cluster.add(1)
    b = await lone_node(cluster)
    if cluster.kind == "p2p":
        assert b.peer_id not in a.connected_peers()
    started = time.monotonic()
    await a.connect(b.dial_addrs[0], timeout=10)
    assert time.monotonic() - started < 10.5
    assert b.peer_id in a.connected_peers()
    await wait_until(lambda: a.peer_id in b.connected_peers(), timeout=10, what="both ends")
    await a.connect(b.dial_addrs[0], timeout=10)  # dialling a connected peer again is fine
    assert b.peer_id in a.connected_peers()


async def test_connect_to_an_unknown_address_is_a_mesh_error(cluster: Cluster,
                                                             closed_port: int) -> None:
    (a,) = await cluster.add(1)
    ghost = ghost_peer_id(cluster, 990)
    if cluster.kind == "memory":
        unknown = cluster.network.node(identity(990), cluster.run).dial_addrs[0]
        malformed = "/memory/nothing-here/p2p"
        elsewhere = MemoryNetwork().node(identity(991), cluster.run)  # up, on another network
        await elsewhere.start()
        cluster.nodes.append(elsewhere)
        extra = [elsewhere.dial_addrs[0]]
    else:
        unknown = f"/ip4/127.0.0.1/tcp/{closed_port}/p2p/{ghost}"
        malformed = f"/ip4/127.0.0.1/tcp/{closed_port}"  # no /p2p/<peer id>
        extra = []
    for addr in (unknown, malformed, "not an address", *extra):
        started = time.monotonic()
        with pytest.raises(MeshError) as info:
            await a.connect(addr, timeout=5)
        assert time.monotonic() - started < 5.5, addr
        assert not isinstance(info.value, TimeoutError), f"{addr}: refused, not timed out"
    with pytest.raises(DialError):
        await a.connect(unknown, timeout=5)
    assert ghost not in a.connected_peers()
    await a.stop()
    with pytest.raises(MeshStateError):
        await a.connect(unknown, timeout=5)


async def test_a_dial_that_never_completes_is_a_mesh_timeout(cluster: Cluster,
                                                            silent_port: int) -> None:
    (a,) = await cluster.add(1)
    if cluster.kind == "memory":
        b = await lone_node(cluster)
        cluster.network.set_fault(b.peer_id, "stall")
        addr = b.dial_addrs[0]
    else:
        addr = f"/ip4/127.0.0.1/tcp/{silent_port}/p2p/{ghost_peer_id(cluster, 991)}"
    started = time.monotonic()
    with pytest.raises(MeshTimeoutError) as info:
        await a.connect(addr, timeout=1.0)
    assert time.monotonic() - started < 2.5
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, MeshError)


async def test_announcement_reaches_others_signed_not_self(cluster: Cluster) -> None:
    a, b, _ = await cluster.add(3)
    seen_b, seen_a = Collector(b), Collector(a)
    blob = os.urandom(1000)
    ann = await announce_until_seen(a, [seen_b], 7, blob)
    assert (ann.run, ann.window, ann.size, ann.sha256) == (cluster.run, 7, 1000, sha256(blob))
    assert ann.announcer == a.address
    assert ann.peer_id == a.peer_id
    got = next(x for x in seen_b.seen if x.sha256 == ann.sha256)
    got.verify()
    assert got.announcer == a.address
    assert not seen_a.has(ann.sha256), "a node must not be handed its own announcement"
    seen_a.cancel()
    seen_b.cancel()


async def test_fetch_returns_the_announced_bytes_and_counts_them(cluster: Cluster) -> None:
    a, b = await cluster.add(2)
    seen = Collector(b)
    blob = os.urandom(300_000)
    ann = await announce_until_seen(a, [seen], 1, blob)
    assert await b.fetch(ann, timeout=10) == blob
    assert await b.fetch((a.peer_id, ann.sha256), timeout=10) == blob
    assert b.stats().bytes_in >= 2 * len(blob)
    # the server counts once its writes return, which may follow the fetcher's receipt
    await wait_until(lambda: a.stats().bytes_out >= 2 * len(blob)
                     and a.stats().blobs_served >= 2, timeout=10, what="a's counters")
    # a node's own blob is served locally
    assert await a.fetch(ann, timeout=1) == blob
    seen.cancel()


async def test_unknown_hash_is_a_typed_error_within_the_timeout(cluster: Cluster) -> None:
    a, b = await cluster.add(2)
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        await b.fetch((a.peer_id, sha256(b"nobody has this")), timeout=5)
    assert time.monotonic() - started < 5.5
    assert a.peer_id in info.value.failures


async def test_fetch_falls_back_to_another_announcer(cluster: Cluster) -> None:
    a, b, c = await cluster.add(3)
    seen = Collector(c)
    blob = os.urandom(200_000)
    ann_a = await announce_until_seen(a, [seen], 3, blob)
    await announce_until_seen(b, [seen], 3, blob)
    await a.stop()
    assert await c.fetch(ann_a, timeout=15) == blob
    seen.cancel()


async def test_records_are_signed_by_their_key_address(cluster: Cluster) -> None:
    a, b = await cluster.add(2)
    key = RecordKey(cluster.run, 5, a.address)
    await a.put_record(key, b"commitment-1")
    assert await b.get_record(key, timeout=5) == b"commitment-1"
    await a.put_record(key, b"commitment-2")
    assert await a.get_record(key, timeout=5) == b"commitment-2"
    with pytest.raises(BadRecordError):
        await a.put_record(RecordKey(cluster.run, 5, b.address), b"forged")
    assert await b.get_record(RecordKey(cluster.run, 6, a.address), timeout=2) is None


async def test_oversized_blob_is_refused(cluster: Cluster) -> None:
    (a,) = await cluster.add(1, **({"max_blob_bytes": 1024} if cluster.kind == "p2p" else {}))
    if cluster.kind == "memory":
        a = cluster.network.node(identity(999), cluster.run, max_blob_bytes=1024)
        await a.start()
        cluster.nodes.append(a)
    with pytest.raises(BlobTooLargeError):
        await a.announce(1, b"x" * 2048)


async def test_connected_peers_and_lifecycle(cluster: Cluster) -> None:
    a, b = await cluster.add(2)
    await wait_until(lambda: b.peer_id in a.connected_peers(), timeout=10, what="connection")
    await b.stop()
    assert b.connected_peers() == ()
    with pytest.raises(MeshStateError):
        await b.announce(1, b"late")
    with pytest.raises(MeshError):
        await b.fetch((a.peer_id, sha256(b"x")), timeout=1)


async def test_timeout_bounds_a_fetch_from_a_silent_peer(cluster: Cluster) -> None:
    """A peer that accepts the request and never answers costs at most `timeout`."""
    if cluster.kind == "memory":
        a, b = await cluster.add(2)
        blob = os.urandom(100)
        seen = Collector(b)
        ann = await announce_until_seen(a, [seen], 1, blob)
        cluster.network.set_fault(a.peer_id, "stall")
        seen.cancel()
    else:
        from tests.network.test_mesh_p2p import EvilMesh, add_evil

        (a,) = await cluster.add(1)
        evil = await add_evil(cluster, "stall")
        b = a
        blob = os.urandom(100)
        seen = Collector(b)
        ann = await announce_until_seen(evil, [seen], 1, blob)
        seen.cancel()
        assert isinstance(evil, EvilMesh)
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        await b.fetch(ann, timeout=1.5)
    assert time.monotonic() - started < 3.0
    # a fetch timeout is also the built-in TimeoutError, for callers that catch that
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, MeshTimeoutError)
    assert isinstance(info.value, FetchTimeoutError)


async def test_held_blob_is_served_unannounced_and_forgotten_by_window(cluster: Cluster) -> None:
    a, b = await cluster.add(2)
    seen = Collector(b)
    old, new = os.urandom(70_000), os.urandom(50_000)
    old_hash = await a.hold(3, old)
    new_hash = await a.hold(5, new)
    assert (old_hash, new_hash) == (sha256(old), sha256(new))
    assert await b.fetch((a.peer_id, old_hash), timeout=10) == old
    assert not seen.has(old_hash), "hold must not gossip"
    assert a.forget(before_window=4) == 1
    with pytest.raises(FetchError):
        await b.fetch((a.peer_id, old_hash), timeout=5)
    assert await b.fetch((a.peer_id, new_hash), timeout=10) == new
    seen.cancel()


async def test_a_restarted_signer_record_outranks_its_stale_one(cluster: Cluster) -> None:
    a, b = await cluster.add(2)
    key = RecordKey(cluster.run, 9, a.address)
    await a.put_record(key, b"before restart")
    a._seqs.clear()  # what a restart forgets: the last sequence number it used
    await a.put_record(key, b"after restart")
    deadline = time.monotonic() + 20
    got = await b.get_record(key, timeout=5)
    while got != b"after restart" and time.monotonic() < deadline:
        got = await b.get_record(key, timeout=5)  # the DHT converges on the highest seq
    assert got == b"after restart"
