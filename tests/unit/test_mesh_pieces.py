"""Pieces of a swarmed blob (node/mesh/p2p_swarm.py): the hash list is bound to the
announced root, every piece to its listed hash, and bitfields round-trip."""

from __future__ import annotations

import os
from collections import Counter
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
import trio
from trio.testing import MockClock

from node.mesh.base import Announcement
from node.mesh.p2p_blob import PeerFault
from node.mesh.p2p_pieces import (
    PIECE_MIN_RATE,
    SLOT_RATE,
    FetchJob,
    Partial,
    bitfield,
    fetch_slots,
    read_bitfield,
    upload_slots,
)
from node.mesh.p2p_swarm import tail_watch
from node.mesh.pieces import (
    IN_FLIGHT,
    MAX_IN_FLIGHT,
    MAX_UPLOAD_SLOTS,
    PER_SOURCE,
    PER_SOURCE_ALONE,
    PIECE_BYTES,
    PIPELINE_MIN_RATE,
    UPLOAD_SLOTS,
    piece_hashes,
    piece_span,
    pieces_root,
    seed_allows,
)


def partial_of(blob: bytes) -> Partial:
    return Partial(window=1, size=len(blob), root=pieces_root(piece_hashes(blob)))


def test_pieces_reassemble_the_blob_in_any_order() -> None:
    blob = os.urandom(2 * PIECE_BYTES + 17)
    p = partial_of(blob)
    p.accept_list(b"".join(piece_hashes(blob)))
    for i in (2, 0, 1):
        start, length = piece_span(i, len(blob))
        p.accept(i, blob[start:start + length])
    assert p.blob() == blob
    assert p.held().tolist() == [True, True, True]
    p.complete(blob)
    assert p.piece(2) == blob[2 * PIECE_BYTES:]
    assert p.piece(3) is None


def test_a_list_that_is_not_the_announced_one_is_a_fault() -> None:
    blob = os.urandom(PIECE_BYTES + 1)
    p = partial_of(blob)
    other = piece_hashes(os.urandom(PIECE_BYTES + 1))
    with pytest.raises(PeerFault, match="root"):
        p.accept_list(b"".join(other))
    with pytest.raises(PeerFault, match="root"):
        p.accept_list(b"".join(piece_hashes(blob))[:-1])
    assert p.hashes is None


def test_a_wrong_or_short_piece_is_a_fault() -> None:
    blob = os.urandom(PIECE_BYTES + 100)
    p = partial_of(blob)
    p.accept_list(b"".join(piece_hashes(blob)))
    with pytest.raises(PeerFault, match="does not hash"):
        p.accept(1, os.urandom(100))
    with pytest.raises(PeerFault, match="bytes"):
        p.accept(1, blob[PIECE_BYTES:-1])
    assert p.pieces == {}


def test_bitfields_round_trip_and_are_checked() -> None:
    held = np.array([True, False, True] + [False] * 7 + [True])
    assert read_bitfield(bitfield(held), 11).tolist() == held.tolist()
    with pytest.raises(PeerFault):
        read_bitfield(bitfield(held), 17)


def test_super_seeding_sends_every_piece_once_before_any_twice() -> None:
    sent = np.zeros(3, dtype=int)
    assert seed_allows(sent, 0)
    assert not seed_allows(sent, 0)  # pieces 1 and 2 have not left yet
    assert seed_allows(sent, 1)
    assert seed_allows(sent, 2)
    assert sent.tolist() == [1, 1, 1]


def test_super_seeding_serves_a_lost_copy_again_once_every_piece_has_left() -> None:
    """The livelock it replaces: copies counted per piece, a piece refused while any
    other had been sent fewer times. Piece 2's only copy was lost on the way, every
    fetcher already holds 0 and 1 (from each other) and asks the author for 2 alone:
    2 must be served, however often 0 and 1 went out."""
    sent = np.array([1, 1, 1])
    assert seed_allows(sent, 0)  # a duplicate of 0: every piece has left once
    assert seed_allows(sent, 2)
    assert seed_allows(sent, 2)
    assert sent.tolist() == [2, 1, 3]


@pytest.mark.parametrize(("rate", "slots"), [
    (0, UPLOAD_SLOTS),  # unknown uplink
    (100e6 / 8, MAX_UPLOAD_SLOTS),  # 100 Mbit/s declared: ~8.3 Mbit/s a slot
    (10e6 / 8, 6),  # 10 Mbit/s declared: six slots
    (3 * SLOT_RATE + 1, 3),  # ~4.7 Mbit/s: three slots, each 1.5x the pieces' minimum
    (2.5e6 / 8, 1),  # 2.5 Mbit/s: two would leave each little above the minimum
    (PIECE_MIN_RATE / 2, 1),  # slower than one slot's minimum: still serves one request
])
def test_a_slow_uplink_serves_fewer_pieces_at_once(rate: float, slots: int) -> None:
    assert upload_slots(rate) == slots
    if rate > 0 and slots > 1:  # every slot gets the rate fetchers demand, and a margin
        assert rate / slots >= 1.5 * PIECE_MIN_RATE


def test_a_fetch_whose_sources_are_busy_with_the_nodes_other_requests_waits() -> None:
    """The node's fetches share one count of open requests per source: a source busy
    with another fetch is not offered, and the fetch waiting for it is not stuck (a
    stuck fetch gives up); a source that is gone is neither."""
    blob = os.urandom(3 * PIECE_BYTES)
    node_load: Counter[str] = Counter()
    job = FetchJob(partial_of(blob), cast(Announcement, None), {}, load=node_load)
    job.views["a"] = np.ones(3, dtype=bool)
    rng = np.random.default_rng(0)
    assert job.choose(0.0, rng) is not None
    assert not job.waiting_on_load()
    node_load["a"] += PER_SOURCE  # another fetch of the same node asked "a"
    assert job.choose(0.0, rng) is None
    assert job.waiting_on_load()
    job.faulted.add("a")
    assert not job.waiting_on_load()


def test_a_new_fetch_can_ask_its_announcer_before_any_bitfield_round() -> None:
    """The announcer signed that it holds every piece: a job made for its announcement
    offers it as a source at once, so the first requests leave with the hash list
    rather than after a bitfield round (half a second in the lab, docs/mesh.md)."""
    blob = os.urandom(3 * PIECE_BYTES)
    ann = cast(Announcement, SimpleNamespace(peer_id="author"))
    job = FetchJob(partial_of(blob), ann, {})
    choice = job.choose(0.0, np.random.default_rng(0))
    assert choice is not None
    assert choice[1] == "author"
    assert job.views["author"].all()


def test_a_second_request_goes_to_a_source_only_when_no_other_can_take_one() -> None:
    """One request open per source while any source, for this blob or another the node
    fetches, can take one (`can_choose`); else a source whose last piece came fast
    gets a second (`PER_SOURCE_ALONE`), which hides the round trip between its
    pieces; never more."""
    blob = os.urandom(4 * PIECE_BYTES)
    node_load: Counter[str] = Counter()
    job = FetchJob(partial_of(blob), cast(Announcement, None), {}, load=node_load)
    job.views["a"] = np.ones(4, dtype=bool)
    job.views["b"] = np.array([True, True, False, False])
    rng = np.random.default_rng(0)
    node_load["a"] = PER_SOURCE
    assert job.can_choose(0.0)
    choice = job.choose(0.0, rng)
    assert choice is not None
    assert choice[1] == "b"  # the other source, while it has a wanted piece
    job.asked[0] = "b"
    job.asked[1] = "b"  # nothing "b" offers is wanted any more
    node_load["b"] = PER_SOURCE
    assert not job.can_choose(0.0)
    assert job.choose(0.0, rng) is None  # another fetch of the node can still ask
    job.rates["a"] = PIPELINE_MIN_RATE / 2  # its last piece came slowly
    assert job.choose(0.0, rng, PER_SOURCE_ALONE) is None
    job.rates["a"] = PIPELINE_MIN_RATE
    choice = job.choose(0.0, rng, PER_SOURCE_ALONE)
    assert choice is not None
    assert choice[1] == "a"
    assert choice[0] in (2, 3)
    node_load["a"] = PER_SOURCE_ALONE
    assert job.choose(0.0, rng, PER_SOURCE_ALONE) is None


@pytest.mark.parametrize(("rate", "slots"), [
    (0, IN_FLIGHT),  # downlink unknown
    (10e6 / 8, 6),  # 10 Mbit/s: six requests at 1.5x the pieces' minimum each
    (100e6 / 8, MAX_IN_FLIGHT),
    (100e3, 1),  # below one slot: still one request
])
def test_a_declared_downlink_sets_the_requests_kept_open(rate: float, slots: int) -> None:
    assert fetch_slots(rate) == slots


def test_the_next_request_leaves_when_the_answers_end_is_a_round_trip_away() -> None:
    """`tail_watch` fires once, when the bytes still to come would take no longer, at
    the rate so far, than the answer's first byte took; never at the last byte (the
    piece is done then) and not without a callback."""
    calls: list[float] = []
    clock = MockClock()

    async def main() -> None:
        watch = tail_watch(1000, 0.1, lambda: calls.append(trio.current_time()))
        assert watch is not None
        clock.jump(0.1)
        watch(100)  # 900 bytes left at 1000 B/s: 0.9 s
        clock.jump(0.7)
        watch(800)  # 200 left: 0.2 s
        assert calls == []
        clock.jump(0.1)
        watch(900)  # 100 left: 0.1 s, the first byte's wait
        watch(950)
        assert len(calls) == 1
        late = tail_watch(1000, 0.0, lambda: calls.append(-1.0))
        assert late is not None
        late(1000)  # the whole answer in one read: nothing to hand over
        assert len(calls) == 1

    trio.run(main, clock=clock)
    assert tail_watch(10, 0.1, None) is None
