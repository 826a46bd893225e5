"""Mesh figures in network namespaces (root only; every node runs in a namespace this
script creates and deletes; nothing in the root namespace is touched):

* `dissemination`: N peers (default 8) each announce a blob (default 10 MiB) and fetch
  everyone else's, all at once. Each peer hangs off a switch namespace by its own veth,
  shaped in both directions to `--mbit` (tbf), and, with `--rtt-ms` > 0, run through
  the lab's user-space delay line (tests/support/delay_line.py; this kernel has no
  netem): each link delays each direction by RTT/4, so any two peers are RTT apart.
  The RTT is measured (ping peer 0 -> peer 1) before the nodes start. Reported against
  the bandwidth lower bound: every peer must receive (N-1) blobs through its link,
  (N-1)·size·8 / rate seconds.
* `relay`: two hosts behind two NATs (MASQUERADE, inbound dropped) and a relay on the
  "public" segment; one blob through the circuit relay, then, after DCUtR, over the
  hole-punched direct connection.

Usage: python benchmarks/mesh_netns_bench.py {dissemination,relay} [--json] [options]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.delay_line import LineSpec
from tests.support.netns import Lab, available, read_event

PUBLIC = "10.99.0"


def dissemination(args: argparse.Namespace) -> dict[str, Any]:
    n, mib, mbit = args.peers, args.mib, args.mbit
    # a peer-to-peer path crosses two links: RTT/4 each way on each link makes RTT
    line = LineSpec(delay_ms=args.rtt_ms / 4) if args.rtt_ms > 0 else None
    with Lab() as lab:
        switch = lab.ns("sw")
        lab.bridge(switch)
        shaping = ""
        hosts = []
        for i in range(n):
            ns = lab.ns(f"p{i}")
            dev, sw_dev = lab.link(ns, f"10.97.0.{i + 1}/24", switch, None, line=line)
            lab.sh(switch, f"ip link set {sw_dev} master {lab.tag}br")
            shaping = lab.shape(ns, dev, mbit)
            lab.shape(switch, sw_dev, mbit)
            hosts.append(ns)
        if line is not None:
            shaping += f" + delay line {line.delay_ms:g} ms each way"
        ping = lab.ping(hosts[0], "10.97.0.2", count=10) if n > 1 else {}
        line_before = lab.line_stats() if line is not None else {}
        procs = []
        boot: list[str] = []
        for i, ns in enumerate(hosts):
            cfg = {"role": "swarm", "key": 10 + i, "host": f"10.97.0.{i + 1}", "port": 4001,
                   "policy": ["10.97.0.0/24"], "peers": n, "blob_mib": mib, "timeout": 180,
                   "bootstrap": boot, "swarm": not args.whole}
            procs.append(lab.spawn(ns, json.dumps(cfg)))
            if i == 0:
                boot = [f"/ip4/10.97.0.1/tcp/4001/p2p/{peer_id_of(lab, procs[0])}"]
        for i, p in enumerate(procs):
            read_event(p, "ready", 240)
            print(f"peer {i} ready", file=sys.stderr)
        started = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        done = [read_event(p, "done", 900) for p in procs]
        wall = time.monotonic() - started
        line_after = lab.line_stats() if line is not None else {}
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
    slowest = max(float(d["seconds"]) for d in done)  # type: ignore[arg-type]
    bound = (n - 1) * mib * 2**20 * 8 / (mbit * 1e6)
    return {"peers": n, "blob_mib": mib, "mbit": mbit, "link": shaping,
            "fetch": "whole blobs" if args.whole else "swarming",
            "rtt_ms_requested": args.rtt_ms, **rtt_report(args.rtt_ms, line, ping),
            **line_report(line_before, line_after),
            "all_ok": all(d["ok"] for d in done),
            # the peers share this machine's cores: how busy they kept them, in all
            "nodes_cpu_s": round(sum(c for d in done if isinstance(c := d.get("cpu_s"), float)),
                                 1),
            "cores": os.cpu_count(),
            "slowest_peer_s": round(slowest, 2), "wall_s": round(wall, 2),
            "median_peer_s": round(sorted(float(d["seconds"]) for d in done)[n // 2], 2),  # type: ignore[arg-type]
            "lower_bound_s": round(bound, 2), "ratio_to_bound": round(slowest / bound, 2)}


def rtt_report(rtt_ms: float, line: LineSpec | None, ping: dict[str, Any]
               ) -> dict[str, Any]:
    """What RTT the peers really have: applied means a delay line is in place and the
    measured minimum is within 10 % (or 1 ms) of the request."""
    measured = {k: ping.get(k) for k in ("min_ms", "avg_ms", "max_ms")}
    low = ping.get("min_ms")
    applied = (line is not None and low is not None
               and abs(low - rtt_ms) <= max(1.0, 0.1 * rtt_ms))
    return {"rtt_applied": applied, "rtt_ms_measured": measured}


def line_report(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The delay-line forwarder's CPU seconds and failed sends during the exchange."""
    if not after:
        return {}
    errors = sum(v[d]["send_errors"] for v in after["links"].values() for d in ("ab", "ba"))
    return {"delay_line_cpu_s": round(after["cpu_s"] - before["cpu_s"], 2),
            "delay_line_send_errors": errors}


def peer_id_of(lab: Lab, proc: Any) -> str:
    """Node 0's peer id: it is derived from its key, the same in every process."""
    from libp2p.crypto.secp256k1 import create_new_key_pair
    from libp2p.peer.id import ID

    from tests.support.keys import identity

    return str(ID.from_pubkey(create_new_key_pair(identity(10).secret).public_key).to_base58())


def relay(args: argparse.Namespace) -> dict[str, Any]:
    from tests.network.test_mesh_relay import natted_host

    with Lab() as lab:
        hub = lab.ns("r")
        lab.bridge(hub, f"{PUBLIC}.1/24")
        ns_a = natted_host(lab, "a", f"{PUBLIC}.2", "10.98.1", hub)
        ns_b = natted_host(lab, "b", f"{PUBLIC}.3", "10.98.2", hub)
        r = lab.spawn(hub, json.dumps({"role": "relay", "key": 1, "host": f"{PUBLIC}.1",
                                       "policy": [f"{PUBLIC}.0/24"]}))
        relay_addr = read_event(r, "up", 30)["dial_addrs"][0]  # type: ignore[index]
        common = {"relays": [relay_addr], "bootstrap": [relay_addr], "hole_punch_after": 1.0}
        holder = lab.spawn(ns_b, json.dumps({
            "role": "holder", "key": 3, "host": "10.98.2.2", "blob_mib": args.mib,
            "policy": [f"{PUBLIC}.0/24", "10.98.2.0/24"], **common}))
        up = read_event(holder, "up", 40)
        fetcher = lab.spawn(ns_a, json.dumps({
            "role": "fetcher", "key": 2, "host": "10.98.1.2", "target": up["peer_id"],
            "expect_direct": True, "timeout": 300,
            "policy": [f"{PUBLIC}.0/24", "10.98.1.0/24"], **common}))
        relayed = read_event(fetcher, "fetched", 300)
        direct = read_event(fetcher, "fetched", 300)
    return {"blob_mib": args.mib,
            "relayed_mib_s": round(float(relayed["mib_s"]), 1),  # type: ignore[arg-type]
            "relayed_path": relayed["transfers"][0]["path"],  # type: ignore[index]
            "direct_mib_s": round(float(direct["mib_s"]), 1),  # type: ignore[arg-type]
            "direct_path": direct["transfers"][0]["path"],  # type: ignore[index]
            "direct_to_relayed": round(float(direct["mib_s"]) / float(relayed["mib_s"]), 2),  # type: ignore[arg-type]
            "ok": bool(relayed["ok"] and direct["ok"])}


def main() -> None:
    # a SIGTERM (e.g. from `timeout`) must still run Lab.close() and remove the namespaces
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["dissemination", "relay"])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--mib", type=float, default=None)
    parser.add_argument("--mbit", type=float, default=100.0)
    parser.add_argument("--rtt-ms", type=float, default=40.0)
    parser.add_argument("--whole", action="store_true",
                        help="fetch whole blobs from their authors (no swarming)")
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat the dissemination; a summary line at the end")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    reason = available(need_iptables=args.what == "relay")
    if reason:
        sys.exit(f"cannot run: {reason}")
    if args.mib is None:
        args.mib = 10.0 if args.what == "dissemination" else 64.0
    if args.what == "relay":
        report(relay(args), args.json)
        return
    ratios = []
    for run in range(args.runs):
        try:
            result = dissemination(args)
        except Exception as exc:  # a run that does not finish is counted, not fatal
            result = {"run": run + 1, "all_ok": False, "error": repr(exc)}
        result["run"] = run + 1
        report(result, args.json)
        if result.get("all_ok"):
            ratios.append(result["ratio_to_bound"])
    if args.runs > 1:
        report({"runs": args.runs, "completed": len(ratios),
                "ratio_to_bound_min": min(ratios, default=None),
                "ratio_to_bound_median": sorted(ratios)[len(ratios) // 2] if ratios else None,
                "ratio_to_bound_max": max(ratios, default=None)}, args.json)


def report(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        for k, v in result.items():
            print(f"{k:24s} {v}")
        print(flush=True)


if __name__ == "__main__":
    main()
