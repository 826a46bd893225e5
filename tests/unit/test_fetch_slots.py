"""A node's fetch slots (node/mesh/p2p_slots.py): one limit over piece requests and
whole-blob streams, turns kept in order, cancelled waiters give their turn back; and the
sources' last rates a node remembers (node/mesh/p2p_swarm.py)."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from node.mesh.p2p_pieces import PIECE_MIN_RATE
from node.mesh.p2p_slots import WAKE, FetchSlots, whole_cost


def test_a_whole_blob_stream_takes_its_minimum_rate_in_piece_slots() -> None:
    assert whole_cost(256 * 1024, 4) == 2  # the default minimum: two piece minimums
    assert whole_cost(256 * 1024, 1) == 1  # never more than the node has
    assert whole_cost(3 * PIECE_MIN_RATE + 1, 8) == 4
    assert whole_cost(0.0, 4) == 1
    with pytest.raises(ValueError, match="at least one"):
        FetchSlots(0)


def test_slots_are_taken_up_to_the_limit_and_given_back() -> None:
    slots = FetchSlots(4)
    assert slots.take(2)
    assert slots.take()
    assert not slots.take(2)
    assert slots.take()
    assert not slots.take()
    slots.give(2)
    assert slots.used == 2
    assert slots.take(2)


def test_a_waiting_turn_is_not_starved_by_single_slots() -> None:
    async def main() -> None:
        slots = FetchSlots(4)
        assert slots.take(3)
        order: list[str] = []

        async def whole() -> None:
            async with slots.held(2):
                order.append("whole")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(whole)
            await trio.testing.wait_all_tasks_blocked()
            assert order == []
            assert not slots.take()  # one is free, but the whole blob waits first
            slots.give()  # two free: the whole blob's turn
            await trio.testing.wait_all_tasks_blocked()
        assert order == ["whole"]
        assert slots.used == 2  # the whole blob gave its two back

    trio.run(main)


def test_a_cancelled_waiter_gives_its_turn_back() -> None:
    async def main() -> None:
        slots = FetchSlots(2)
        assert slots.take(2)
        with trio.move_on_after(0.05):
            await slots.acquire(2)
        assert not slots._turns
        slots.give(2)
        assert slots.used == 0
        assert slots.take(2)  # nothing was left behind

    trio.run(main)


def test_watchers_are_woken_when_a_slot_frees() -> None:
    async def main() -> None:
        slots = FetchSlots(1)
        assert slots.take()
        send, recv = trio.open_memory_channel[tuple[int, str, object]](math.inf)
        slots.watch(send)
        slots.give()
        assert recv.receive_nowait() == WAKE
        slots.unwatch(send)
        assert slots.take()
        slots.give()
        with pytest.raises(trio.WouldBlock):
            recv.receive_nowait()  # woken once per watch

    trio.run(main)


def test_a_node_remembers_the_rates_of_its_most_recent_sources_only() -> None:
    from types import SimpleNamespace

    from node.mesh.p2p_swarm import RATES_KEPT, PieceTransfers

    node = SimpleNamespace(_source_rates={})
    for i in range(RATES_KEPT + 5):
        PieceTransfers._rate_seen(node, f"peer{i}", float(i))  # type: ignore[arg-type]
    PieceTransfers._rate_seen(node, "peer5", 0.0)  # heard from again: kept longest
    assert len(node._source_rates) == RATES_KEPT
    assert "peer0" not in node._source_rates
    assert node._source_rates["peer5"] == 0.0
    assert list(node._source_rates)[-1] == "peer5"
