"""The swarming policy (node/mesh/pieces.py) and the dissemination simulator
(node/sim/dissemination.py): fair rates, exact answers where theory gives them, the
lower bound respected, and swarming spending an author's upload about once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.mesh.p2p_pieces import fetch_slots, upload_slots
from node.mesh.pieces import (
    MAX_IN_FLIGHT,
    PIECE_BYTES,
    fastest_first,
    piece_count,
    piece_span,
    rarest_wanted,
)
from node.sim.dissemination import (
    Link,
    Scenario,
    lower_bound,
    simulate,
)
from node.sim.flows import Flows, maxmin_rates

MIB = 1 << 20


def test_pieces_cover_the_blob_exactly() -> None:
    assert piece_count(0) == 1
    assert piece_count(3 * MIB + 1, MIB) == 4
    size = 3 * PIECE_BYTES + 1
    assert piece_count(size) == 4
    spans = [piece_span(i, size) for i in range(4)]
    assert spans[-1] == (3 * PIECE_BYTES, 1)
    assert sum(length for _, length in spans) == size
    with pytest.raises(IndexError):
        piece_span(4, size)


def test_rarest_available_piece_and_least_used_then_fastest_source() -> None:
    rng = np.random.default_rng(0)
    wanted = np.array([True, True, True, False])
    holders = np.array([3, 0, 2, 1])  # piece 1 is wanted but nobody has it
    assert rarest_wanted(wanted & (holders > 0), holders, rng) == 2
    assert rarest_wanted(np.zeros(4, dtype=bool), holders, rng) is None
    ties = {rarest_wanted(np.ones(3, dtype=bool), np.array([1, 1, 5]), rng)
            for _ in range(50)}
    assert ties == {0, 1}  # ties spread at random, never to the commoner piece
    load = np.array([1, 0, 0, 0])  # requests this fetcher has open with each source
    rate = np.array([9e9, 2e6, 5e6, np.inf])  # their last pieces; 3 never tried
    assert fastest_first([0, 1, 2], load, rate, rng) == 2  # fewest open, then fastest
    assert fastest_first([0, 1, 2, 3], load, rate, rng) == 3  # an untried one is tried
    untried = np.full(4, np.inf)
    assert {fastest_first([1, 2, 3], load, untried, rng) for _ in range(50)} == {1, 2, 3}
    with pytest.raises(ValueError, match="no source"):
        fastest_first([], load, rate, rng)


def test_maxmin_rates_share_fairly_and_fill_what_is_left() -> None:
    caps = np.array([10.0, 4.0, 100.0])  # an uplink, a slow downlink, a fast downlink
    # flow 0: uplink -> slow downlink; flow 1: uplink -> fast downlink
    rates = maxmin_rates(np.array([[0, 1], [0, 2]]), caps)
    assert rates.tolist() == pytest.approx([4.0, 6.0])  # not min(10/2, .) = 5 for both


def symmetric(n: int, rtt: float = 0.0) -> tuple[Link, ...]:
    return tuple(Link(100e6, 100e6, rtt) for _ in range(n))


def test_direct_all_to_all_on_equal_links_meets_the_bound_exactly() -> None:
    """Without ACKs the exchange fills every link to the bound; with them each uplink
    also carries the ACKs of as many bytes as it sends, and takes that much longer."""
    s = Scenario(symmetric(8), tuple(range(8)), 10 * MIB, "direct", ack_share=0.0)
    out = simulate(s)
    assert out.bound_s == pytest.approx(7 * 10 * MIB * 8 / 100e6)
    assert out.slowest_s == pytest.approx(out.bound_s)
    assert out.author_upload == 7.0
    acked = simulate(Scenario(symmetric(8), tuple(range(8)), 10 * MIB, "direct"))
    assert acked.slowest_s == pytest.approx(out.bound_s * (1 + Scenario.ack_share))


def busy_home_pair(**knobs: object) -> Scenario:
    """Two authors swapping blobs: peer 0 on a 10 Mbit/s uplink (full with its own
    upload) and a 100 Mbit/s downlink, peer 1 at 100 Mbit/s both ways."""
    links = (Link(10e6, 100e6), Link(100e6, 100e6))
    return Scenario(links, (0, 1), 4 * MIB, "direct", **knobs)  # type: ignore[arg-type]


def test_acks_shared_hold_a_full_uplinks_downloads_to_its_fair_share() -> None:
    """In the fair filling both flows grow until peer 0's uplink (its upload plus its
    download's ACKs) is full, and stop there together."""
    a, bits = Scenario.ack_share, 8 * 4 * MIB
    out = simulate(busy_home_pair(acks="shared"))
    assert out.finish_s[0] == pytest.approx(bits * (1 + a) / 10e6)
    assert out.finish_s[1] == pytest.approx(out.finish_s[0])


def test_acks_ahead_leave_a_full_uplinks_downloads_at_their_link_rate() -> None:
    """ACKs first: peer 0's upload gets what its ACKs leave (10 - a*D), and its download
    D what peer 1's uplink leaves after the ACKs of that upload: D = 100 - a*(10 - a*D)."""
    a, bits = Scenario.ack_share, 8 * 4 * MIB
    out = simulate(busy_home_pair(acks="ahead"))
    download = (100e6 - a * 10e6) / (1 - a * a)
    assert out.finish_s[0] == pytest.approx(bits / download, rel=1e-5)
    assert out.finish_s[1] > 8 * bits / 100e6  # the slow uplink's own upload is later


def test_serving_held_below_the_uplink_frees_the_downloads_acks() -> None:
    """Every peer's serving held to half its uplink: peer 0's uplink never fills, so
    even in the fair filling its download runs at peer 1's share (50 Mbit/s), five
    times the 10 / (1 + a) it gets with its uplink full."""
    bits = 8 * 4 * MIB
    out = simulate(busy_home_pair(acks="shared", upload_share=0.5))
    assert out.finish_s[0] == pytest.approx(bits / 50e6)
    assert out.finish_s[1] == pytest.approx(bits / 5e6)
    with pytest.raises(ValueError, match="upload_share"):
        busy_home_pair(upload_share=0.0)


def test_an_rtt_costs_at_least_one_rtt() -> None:
    fast = simulate(Scenario(symmetric(4), (0,), MIB, "direct"))
    slow = simulate(Scenario(symmetric(4, rtt=0.05), (0,), MIB, "direct"))
    assert slow.slowest_s >= fast.slowest_s + 0.05 - 1e-9


def test_swarming_spends_a_slow_authors_upload_about_once() -> None:
    links = (Link(10e6, 500e6, 0.02), *(Link(200e6, 500e6, 0.02) for _ in range(9)))
    s = dict(links=links, authors=(0,), size=8 * MIB, piece=MIB // 2)
    direct = simulate(Scenario(policy="direct", **s))
    swarm = simulate(Scenario(policy="swarm", **s))
    assert direct.author_upload == 9.0
    assert swarm.author_upload < 2.0
    assert swarm.slowest_s < direct.slowest_s / 4
    assert swarm.slowest_s >= swarm.bound_s


def test_a_seed_replays_exactly_and_another_may_differ() -> None:
    s = Scenario(symmetric(6, 0.01), (0, 2, 4), 3 * MIB, "swarm", piece=MIB // 4)
    assert simulate(s, seed=1) == simulate(s, seed=1)


@given(st.integers(2, 6), st.integers(1, 3), st.integers(1, 6), st.integers(0, 2**16),
       st.sampled_from(["direct", "swarm"]))
@settings(max_examples=25, deadline=None)
def test_no_policy_beats_the_lower_bound(n: int, authors: int, pieces: int, seed: int,
                                         policy: str) -> None:
    rng = np.random.default_rng(seed)
    links = tuple(Link(float(rng.uniform(5e6, 100e6)), float(rng.uniform(5e6, 100e6)),
                       float(rng.uniform(0, 0.05))) for _ in range(n))
    s = Scenario(links, tuple(range(min(authors, n))), pieces * 100_000, policy,  # type: ignore[arg-type]
                 piece=100_000, host_bps=None if seed % 2 else 50e6)
    out = simulate(s, seed)
    assert out.slowest_s >= lower_bound(s) * (1 - 1e-9)
    assert all(t >= 0 for t in out.finish_s)


def test_bad_scenarios_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        Scenario(symmetric(3), (1, 1), MIB)
    with pytest.raises(ValueError, match="not a peer"):
        Scenario(symmetric(3), (5,), MIB)
    with pytest.raises(ValueError, match="positive"):
        Scenario(symmetric(3), (0,), 0)
    with pytest.raises(ValueError, match="per peer"):
        Scenario(symmetric(3), (0,), MIB, holder_slots=(1, 2))
    with pytest.raises(ValueError, match="per peer"):
        Scenario(symmetric(3), (0,), MIB, holder_slots=(1, 0, 2))


def test_a_holder_with_one_slot_serves_one_fetcher_at_a_time() -> None:
    """Per-peer upload slots (`holder_slots`, as `upload_slots(upload_rate)` gives a
    slow uplink): an author with a fast uplink and fetchers with slow downlinks
    serves four of them at once with eight slots, one at a time with one, so its
    pieces leave later and gathering takes longer (a quarter more here)."""
    links = (Link(1e9, 1e9, 0.0),) + (Link(1e9, 8e6, 0.0),) * 4
    one = simulate(Scenario(links, (0,), 4 * MIB, holder_slots=(1, 8, 8, 8, 8), piece=MIB))
    eight = simulate(Scenario(links, (0,), 4 * MIB, piece=MIB))
    assert one.transfers == eight.transfers == 16
    assert eight.slowest_s == pytest.approx(4 * MIB * 8 / 8e6)  # the downlink bound
    assert one.slowest_s > 1.2 * eight.slowest_s


def test_declared_fast_links_give_holders_a_slot_for_every_fetchers_requests() -> None:
    """Ten peers on 1 Gb/s links, every fetcher at the requests a declared downlink
    opens: with the declared uplink's slots (`upload_slots`, 12) the exchange stays
    within 1.2x the bound; with the 8 of an unknown uplink, fetchers wait for a free
    slot (answers handed over still hold theirs) and it takes over 1.35x."""
    rate = 1e9 / 8
    assert fetch_slots(rate) == MAX_IN_FLIGHT
    s = dict(links=tuple(Link(1e9, 1e9, 0.02) for _ in range(10)), authors=tuple(range(10)),
             size=8 * MIB, piece=MIB, in_flight=fetch_slots(rate))
    for seed in range(3):
        declared = simulate(Scenario(upload_slots=upload_slots(rate), **s), seed)  # type: ignore[arg-type]
        unknown = simulate(Scenario(upload_slots=upload_slots(0), **s), seed)  # type: ignore[arg-type]
        assert declared.ratio < 1.2 < 1.35 < unknown.ratio


def test_a_single_source_gets_a_second_request_that_hides_the_round_trip() -> None:
    """Two peers, 40 ms apart at 100 Mbit/s: with one request per source and no
    hand-over the fetcher idles a round trip between pieces; a second request with
    its only source (`per_source_alone`, once its first piece showed it fast) fills
    it, and so does asking again a round trip before a piece ends (`hand_over`, the
    mesh's `tail_watch`). Behind a 10 Mbit/s uplink a piece takes ~0.9 s: the source
    is not fast enough for a second request."""
    s = dict(links=symmetric(2, rtt=0.04), authors=(0,), size=32 * MIB, piece=MIB)
    one = simulate(Scenario(per_source_alone=1, hand_over=False, **s))  # type: ignore[arg-type]
    two = simulate(Scenario(hand_over=False, **s))  # type: ignore[arg-type]
    handed = simulate(Scenario(per_source_alone=1, **s))  # type: ignore[arg-type]
    assert one.slowest_s > 1.3 * one.bound_s  # 32 round trips idle beside 32 pieces
    assert two.slowest_s < 0.85 * one.slowest_s
    assert handed.slowest_s < 0.85 * one.slowest_s
    assert min(two.slowest_s, handed.slowest_s) >= one.bound_s
    slow = dict(s, links=(Link(10e6, 100e6, 0.04), Link(100e6, 100e6, 0.04)),
                hand_over=False)
    assert simulate(Scenario(**slow)) == simulate(Scenario(per_source_alone=1, **slow))  # type: ignore[arg-type]


def test_the_flow_table_grows_when_handed_over_flows_still_finish() -> None:
    """A handed-over flow holds no request slot, so more flows than slots can be live;
    the table makes room and keeps every flow it had."""
    flows = Flows(1)
    for k in range(3):
        flows.add(0, 1, k, 10.0 + k, 0.0, 0.0)
    assert flows.live.sum() == 3
    assert sorted(flows.piece[flows.live].tolist()) == [0, 1, 2]
    assert sorted(flows.left[flows.live].tolist()) == [10.0, 11.0, 12.0]


SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dissemination_sim.py"


def test_the_benchmark_prints_a_row_and_the_loopback_check() -> None:
    run = [sys.executable, str(SCRIPT), "--models", "1b", "--peers", "20", "--profiles", "1g"]
    out = subprocess.run(run, capture_output=True, text=True, timeout=300, check=True)
    rows = json.loads(out.stdout.splitlines()[-1])["rows"]
    assert [(r["model"], r["peers"], r["profile"]) for r in rows] == [("1b", 20, "1g")]
    assert rows[0]["swarm"]["slowest_s"] >= rows[0]["bound_s"]
    assert "| 1b |" in out.stdout
    loop = subprocess.run([sys.executable, str(SCRIPT), "--loopback"], capture_output=True,
                          text=True, timeout=300, check=True)
    direct, swarm = (json.loads(line) for line in loop.stdout.splitlines())
    assert direct["author_upload"] == 6.0
    assert swarm["author_upload"] < 2.0
