"""Two hosts behind two NATs: a blob goes through a circuit relay, then over a hole-punched
direct connection (DCUtR).

Network safety: every node runs inside a namespace this test creates (tests/support/netns.py)
and deletes in its finalizer, even on failure. Topology (all inside namespaces):

    r:  relay, bridge 10.99.0.1/24 ("public" segment)
    na: NAT for a, public 10.99.0.2, private 10.98.1.1/24; a: 10.98.1.2
    nb: NAT for b, public 10.99.0.3, private 10.98.2.1/24; b: 10.98.2.2

Each NAT masquerades out of its public side and drops inbound packets that are not
part of a flow started inside (conntrack ESTABLISHED,RELATED only).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any, cast

import pytest

pytest.importorskip("libp2p")

from node.mesh.pieces import piece_count
from tests.support.netns import Lab, lab_or_skip, read_event

PUBLIC = "10.99.0"


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_or_skip(need_iptables=True) as made:
        yield made


def natted_host(lab: Lab, name: str, public_ip: str, private_net: str, hub: str) -> str:
    nat, host = lab.ns(f"n{name}"), lab.ns(name)
    public_dev, hub_dev = lab.link(nat, f"{public_ip}/24", hub, None)
    lab.sh(hub, f"ip link set {hub_dev} master {lab.tag}br")
    lab.link(nat, f"{private_net}.1/24", host, f"{private_net}.2/24")
    lab.sh(host, f"ip route add default via {private_net}.1")
    lab.nat(nat, public_dev)
    return host


def test_relay_then_hole_punch_through_two_nats(lab: Lab) -> None:
    hub = lab.ns("r")
    lab.bridge(hub, f"{PUBLIC}.1/24")
    ns_a = natted_host(lab, "a", f"{PUBLIC}.2", "10.98.1", hub)
    ns_b = natted_host(lab, "b", f"{PUBLIC}.3", "10.98.2", hub)
    # unsolicited inbound is dropped at the NAT (a timeout, not even a refusal)
    probe = ("import socket\ntry:\n socket.create_connection(('PUBLIC.2', 9), timeout=1)\n"
             "except TimeoutError:\n print('dropped')\nexcept OSError as e:\n print(e)")
    assert lab.sh(hub, f'{sys.executable} -c "{probe.replace("PUBLIC", PUBLIC)}"').strip() \
        == "dropped"

    relay = lab.spawn(hub, json.dumps({"role": "relay", "key": 1, "host": f"{PUBLIC}.1",
                                       "policy": [f"{PUBLIC}.0/24"]}))
    relay_addr = read_event(relay, "up", 30)["dial_addrs"][0]  # type: ignore[index]
    assert str(relay_addr).startswith(f"/ip4/{PUBLIC}.1/tcp/")
    common = {"relays": [relay_addr], "bootstrap": [relay_addr], "hole_punch_after": 3.0}
    holder = lab.spawn(ns_b, json.dumps({
        "role": "holder", "key": 3, "host": "10.98.2.2", "blob_mib": 4,
        "policy": [f"{PUBLIC}.0/24", "10.98.2.0/24"], **common}))
    up = read_event(holder, "up", 40)
    assert up["reachability"] == "private"
    assert any("/p2p-circuit/p2p/" in a for a in cast(list[str], up["circuit_addrs"]))
    fetcher = lab.spawn(ns_a, json.dumps({
        "role": "fetcher", "key": 2, "host": "10.98.1.2", "target": up["peer_id"],
        "expect_direct": True, "policy": [f"{PUBLIC}.0/24", "10.98.1.0/24"], **common}))

    relayed = read_event(fetcher, "fetched", 60)
    assert relayed["ok"] is True
    assert relayed["reachability"] == "private"
    pieces = cast(list[dict[str, Any]], relayed["transfers"])  # one per piece, all relayed
    assert len(pieces) == piece_count(4 * 2**20), pieces
    for first in pieces:
        assert first["relayed"] is True, first
        assert any("/p2p-circuit" in p for p in first["path"]), first

    direct = read_event(fetcher, "fetched", 60)
    assert direct["ok"] is True
    pieces = cast(list[dict[str, Any]], direct["transfers"])
    assert len(pieces) == piece_count(4 * 2**20), pieces
    for second in pieces:
        assert second["relayed"] is False, second
        # the direct path ends at b's NAT public address (not b's private one or the relay)
        assert second["path"][0].startswith(f"/ip4/{PUBLIC}.3/tcp/"), second
    assert cast(list[str], direct["direct"])[0].startswith(f"/ip4/{PUBLIC}.3/tcp/"), direct
