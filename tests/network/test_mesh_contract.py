"""One contract, two implementations: the in-memory mesh and the libp2p mesh on 127.0.0.1."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import pytest

from node.mesh import (
    BadRecordError,
    BlobTooLargeError,
    FetchError,
    Mesh,
    MeshError,
    MeshStateError,
    RecordKey,
)
from node.mesh.base import sha256
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


async def test_implements_protocol(cluster: Cluster) -> None:
    (node,) = await cluster.add(1)
    assert isinstance(node, Mesh)
    assert node.address == identity(100).address
    assert node.peer_id
    assert node.listen_addrs


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
    assert a.stats().bytes_out >= 2 * len(blob)
    assert a.stats().blobs_served >= 2
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
    with pytest.raises(FetchError):
        await b.fetch(ann, timeout=1.5)
    assert time.monotonic() - started < 3.0


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
