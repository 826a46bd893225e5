"""Bitfields in batches between real libp2p hosts on 127.0.0.1 (node/mesh/p2p_haves.py)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest

pytest.importorskip("libp2p")

import trio

from node.mesh import p2p_haves
from node.mesh.base import sha256
from node.mesh.p2p import P2PMesh
from node.mesh.p2p_blob import PeerUnavailable
from node.mesh.p2p_haves import HAVES_PROTOCOL, KEPT_PER_PEER, haves_request
from node.mesh.pieces import PIECE_BYTES, piece_count
from tests.support.mesh import Cluster, Collector, announce_until_seen, wait_until

MIB = 1 << 20


async def test_bitfield_asks_to_one_holder_leave_as_one_request(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    fetcher, holder = await cluster.add(2)
    collector = Collector(fetcher)
    anns = [await announce_until_seen(holder, [collector], i + 1, os.urandom(3 * MIB))
            for i in range(3)]
    opened: Counter[str] = Counter()
    open_stream = P2PMesh._open

    async def counting(self: P2PMesh, peer: str, protocol: str, first: bytes = b"",
                       credit: int = 0) -> Any:
        opened[protocol] += 1
        return await open_stream(self, peer, protocol, first, credit)

    monkeypatch.setattr(P2PMesh, "_open", counting)
    lacking = sha256(b"a blob the holder never had")
    asks = {a.sha256: piece_count(a.size) for a in anns} | {lacking: 5}
    results = await fetcher._call(ask_all, fetcher, holder, asks, timeout=30)
    assert opened == Counter({HAVES_PROTOCOL: 1})  # four asks, one stream
    for ann in anns:
        assert results[ann.sha256].tolist() == [True] * piece_count(3 * MIB)
    assert isinstance(results[lacking], PeerUnavailable)
    # the next rounds' asks go out on the same stream
    for _ in range(3):
        again = await fetcher._call(ask_all, fetcher, holder, asks, timeout=30)
        assert again[anns[0].sha256].tolist() == [True] * piece_count(3 * MIB)
    assert opened == Counter({HAVES_PROTOCOL: 1})


async def test_a_kept_stream_the_holder_ended_is_replaced(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p2p_haves, "SERVE_IDLE_S", 0.2)  # the holder ends idle streams
    fetcher, holder = await cluster.add(2)
    ann = await announce_until_seen(holder, [Collector(fetcher)], 1, os.urandom(2 * PIECE_BYTES))
    asks = {ann.sha256: piece_count(ann.size)}
    first = await fetcher._call(ask_all, fetcher, holder, asks, timeout=30)
    assert first[ann.sha256].tolist() == [True, True]
    kept = fetcher._kept[holder.peer_id][0] if fetcher._kept else None
    assert kept is not None
    # the holder's end arrives as the stream's FIN
    await wait_until(lambda: kept.muxed_stream.recv_closed, timeout=10,
                     what="the holder to end the idle stream")
    second = await fetcher._call(ask_all, fetcher, holder, asks, timeout=30)
    assert second[ann.sha256].tolist() == [True, True]
    assert fetcher._kept is not None
    assert fetcher._kept[holder.peer_id][0] is not kept


async def ask_all(fetcher: P2PMesh, holder: P2PMesh, asks: dict[bytes, int]
                  ) -> dict[bytes, Any]:
    """`holder`'s answer to each of `asks`, all asked at once (on the mesh's thread)."""
    results: dict[bytes, Any] = {}

    async def one(digest: bytes, count: int) -> None:
        try:
            results[digest] = await fetcher._have_batched(holder.peer_id, digest, count)
        except Exception as exc:
            results[digest] = exc

    async with trio.open_nursery() as nursery:
        for digest, count in asks.items():
            nursery.start_soon(one, digest, count)
    return results


async def test_a_holder_keeps_two_streams_open_for_one_asker(cluster: Cluster) -> None:
    # an asker needs one stream; a third and later get one answer each and are closed
    fetcher, holder = await cluster.add(2)
    ann = await announce_until_seen(holder, [Collector(fetcher)], 1, os.urandom(2 * PIECE_BYTES))
    request = haves_request([ann.sha256])

    async def three_streams() -> list[bool]:
        streams = [await fetcher._open(holder.peer_id, HAVES_PROTOCOL, request)
                   for _ in range(KEPT_PER_PEER + 1)]
        for stream in streams:  # every first answer comes
            assert (await fetcher._read_have(stream, 2)).tolist() == [True, True]
        answered = []
        for stream in streams:
            await stream.write(request)
            try:
                await fetcher._read_have(stream, 2)
                answered.append(True)
            except PeerUnavailable:  # the holder closed it after the first
                answered.append(False)
        for stream in streams:
            await stream.reset()
        return answered

    assert await fetcher._call(three_streams, timeout=30) == [True] * KEPT_PER_PEER + [False]
