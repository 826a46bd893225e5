"""Mesh figures in network namespaces (root only; every node runs in a namespace this
script creates and deletes; nothing in the root namespace is touched):

* `dissemination`: N peers (default 8) each announce a blob (default 10 MiB) and fetch
  everyone else's, all at once. Each peer hangs off a switch namespace by its own veth,
  shaped in both directions to `--mbit` (tbf), and, with `--rtt-ms` > 0, run through
  the lab's user-space delay line (tests/support/delay_line.py; this kernel has no
  netem): each link delays each direction by RTT/4, so any two peers are RTT apart.
  The RTT is measured (ping peer 0 -> peer 1) before the nodes start. Reported against
  the bandwidth lower bound: every peer must receive (N-1) blobs through its link,
  (N-1)·size·8 / rate seconds (with `--slow-up K:MBIT`, the last K peers' uplinks are
  slower, and the bound also counts each blob leaving its author once and all bytes
  leaving through the uplinks together).
  With `--transport tcp` the peers exchange the same bytes over plain TCP instead
  (one connection to every other peer, all at once, no libp2p): what the lab's links
  themselves carry, the floor any protocol over them starts from. With `--windows K`
  the same nodes run K windows in a row, each with new blobs, over the connections
  the earlier windows made (one row per window; the first pays the dials, as the
  first window of a run does). The delay line's CPU is counted from `go`, like the
  nodes'.
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

from node.mesh.p2p_pieces import fetch_slots
from node.mesh.pieces import PIECE_BYTES
from tests.support.delay_line import LineSpec
from tests.support.lab_figures import LinkSampler, line_report, rtt_report, spread, tcp_state
from tests.support.netns import Lab, available, read_event

PUBLIC = "10.99.0"
SELF = str(Path(__file__).resolve())
TCP_PORT = 4002


# ---- the plain-TCP exchange (runs inside a namespace) ----------------------------------
async def tcp_exchange(cfg: dict[str, Any]) -> None:
    """Send `blob_mib` to every other peer and receive theirs, one TCP connection per
    pair and direction, all at once after `go`; `done` when every byte has arrived."""
    import asyncio

    n, me, size = cfg["peers"], cfg["index"], int(cfg["blob_mib"] * 2**20)
    arrived: list[int] = []
    finished = asyncio.Event()

    async def receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        while chunk := await reader.read(1 << 20):
            got += len(chunk)
        arrived.append(got)
        writer.close()
        if len(arrived) == n - 1:
            finished.set()

    async def send(j: int) -> None:
        _, writer = await asyncio.open_connection(f"10.97.0.{j + 1}", TCP_PORT)
        view = memoryview(bytes(size))
        for at in range(0, size, 1 << 20):
            writer.write(view[at:at + (1 << 20)])
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(receive, f"10.97.0.{me + 1}", TCP_PORT)
    print(json.dumps({"event": "ready"}), flush=True)
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() not in ("go", ""):
        pass
    started, cpu = time.monotonic(), time.process_time()
    sends = asyncio.gather(*(send(j) for j in range(n) if j != me))
    await finished.wait()
    seconds = time.monotonic() - started
    await sends
    print(json.dumps({"event": "done", "seconds": seconds, "ok": arrived == [size] * (n - 1),
                      "cpu_s": time.process_time() - cpu}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # keep the port until told to stop
    server.close()


def uplinks(args: argparse.Namespace) -> list[float]:
    """Each peer's upload rate in Mbit/s: `--mbit`, or `--slow-up K:M` for the last K."""
    if not args.slow_up:
        return [args.mbit] * args.peers
    k, rate = args.slow_up.split(":")
    if not 0 < int(k) < args.peers:
        raise SystemExit("--slow-up K:MBIT needs 0 < K < peers")
    return [args.mbit] * (args.peers - int(k)) + [float(rate)] * int(k)


def upload_rate(args: argparse.Namespace, up_mbit: float, mbit: float) -> float:
    """What a node declares as its upload rate (bytes/s; 0: nothing): a slow uplink's
    operator says so, and the node serves fewer pieces at once instead of every one
    below the fetchers' minimum rate; with `--declare-uplink SHARE`, every node
    declares that share of its uplink (its serving then leaves the rest to its ACKs)."""
    if args.declare_uplink:
        return float(args.declare_uplink) * up_mbit * 1e6 / 8
    return up_mbit * 1e6 / 8 if up_mbit < mbit else 0.0


def bandwidth_bound(up_mbit: list[float], down_mbit: float, mib: float) -> float:
    """No exchange can finish sooner: every peer downloads the others' blobs, every
    blob leaves its author once, and all those bytes leave through the uplinks."""
    from node.sim.dissemination import Link, Scenario, lower_bound

    links = tuple(Link(u * 1e6, down_mbit * 1e6) for u in up_mbit)
    return lower_bound(Scenario(links, tuple(range(len(links))), int(mib * 2**20)))


def dissemination(args: argparse.Namespace) -> list[dict[str, Any]]:
    n, mib, mbit = args.peers, args.mib, args.mbit
    up = uplinks(args)
    # a peer-to-peer path crosses two links: RTT/4 each way on each link makes RTT
    line = LineSpec(delay_ms=args.rtt_ms / 4) if args.rtt_ms > 0 else None
    with Lab() as lab:
        switch = lab.ns("sw")
        lab.bridge(switch)
        shaping = ""
        hosts, sw_devs = [], []
        for i in range(n):
            ns = lab.ns(f"p{i}")
            dev, sw_dev = lab.link(ns, f"10.97.0.{i + 1}/24", switch, None, line=line)
            lab.sh(switch, f"ip link set {sw_dev} master {lab.tag}br")
            shaping = lab.shape(ns, dev, up[i], acks_first=args.acks_first)  # its uplink
            lab.shape(switch, sw_dev, mbit, acks_first=args.acks_first)  # its downlink
            hosts.append(ns)
            sw_devs.append(sw_dev)
        if args.slow_up:
            kind = "htb" if args.acks_first else "tbf"
            shaping = (f"{kind} rate {mbit}mbit, the last "
                       f"{args.slow_up.replace(':', ' up at ')}mbit"
                       + (", small packets first" if args.acks_first else ""))
        if line is not None:
            shaping += f" + delay line {line.delay_ms:g} ms each way"
        ping = lab.ping(hosts[0], "10.97.0.2", count=10) if n > 1 else {}
        procs = []
        boot: list[str] = []
        for i, ns in enumerate(hosts):
            if args.transport == "tcp":
                procs.append(lab.popen(ns, [SELF, "_tcp", json.dumps(
                    {"peers": n, "index": i, "blob_mib": mib})]))
                continue
            cfg = {"role": "swarm", "key": 10 + i, "host": f"10.97.0.{i + 1}", "port": 4001,
                   "policy": ["10.97.0.0/24"], "peers": n, "blob_mib": mib, "timeout": 180,
                   "bootstrap": boot, "swarm": not args.whole, "windows": args.windows,
                   "upload_rate": upload_rate(args, up[i], mbit),
                   "download_rate": mbit * 1e6 / 8 if args.declare_downlink else 0.0}
            procs.append(lab.spawn(ns, json.dumps(cfg)))
            if i == 0:
                boot = [f"/ip4/10.97.0.1/tcp/4001/p2p/{peer_id_of(lab, procs[0])}"]
        rows = [run_window(args, lab, procs, (switch, sw_devs, hosts), w)
                for w in range(1, (1 if args.transport == "tcp" else args.windows) + 1)]
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
    for row in rows:
        row.update(link=shaping, **rtt_report(args.rtt_ms, line, ping))
    return rows


def run_window(args: argparse.Namespace, lab: Lab, procs: list[Any],
               net: tuple[str, list[str], list[str]], window: int) -> dict[str, Any]:
    """One window: wait until every node is ready, `go`, and the figures once each
    has every blob. `net`: the switch's namespace, its ports and the peers' namespaces."""
    switch, sw_devs, hosts = net
    n, mib, mbit, up = args.peers, args.mib, args.mbit, uplinks(args)
    if window > 1:
        send_all(procs, "next")  # only now: nodes announce the window's blobs
    for i, p in enumerate(procs):
        read_event(p, "ready", 240)
        print(f"peer {i} ready (window {window})", file=sys.stderr)
    line = args.rtt_ms > 0
    line_before = lab.line_stats() if line else {}
    tcp_before = tcp_state(lab, hosts)
    sampler = LinkSampler(lab, switch, sw_devs) if args.timeline else None
    started = time.monotonic()
    send_all(procs, "go")
    done = [read_event(p, "done", 900) for p in procs]
    wall = time.monotonic() - started
    timeline = sampler.stop(sum(up), mbit * n) if sampler is not None else None
    line_after = lab.line_stats() if line else {}
    tcp_after = tcp_state(lab, hosts)
    if args.transport != "tcp":  # every node is done: now each checks what it fetched
        send_all(procs, "check")
        for d, p in zip(done, procs, strict=True):
            d["ok"] = read_event(p, "checked", 120)["ok"]
    slowest = max(float(d["seconds"]) for d in done)  # type: ignore[arg-type]
    bound = bandwidth_bound(up, mbit, mib)
    return {"peers": n, "blob_mib": mib, "mbit": mbit,
            **({"up_mbit": up} if args.slow_up else {}),
            **({"window": window} if args.windows > 1 else {}),
            "in_flight": fetch_slots(mbit * 1e6 / 8 if args.declare_downlink else 0.0),
            "piece_bytes": PIECE_BYTES,
            **({"acks_first": True} if args.acks_first else {}),
            **({"declared_uplink": args.declare_uplink} if args.declare_uplink else {}),
            # round trips before a piece's bytes flow (node/mesh/p2p_select.py)
            "request_rtts": 1,
            "fetch": "plain tcp" if args.transport == "tcp"
            else "whole blobs" if args.whole else "swarming",
            "rtt_ms_requested": args.rtt_ms,
            **line_report(line_before, line_after),
            # the peers' TCP state at `go` and once every blob has arrived
            "tcp_at_go": tcp_before, "tcp_at_end": tcp_after,
            # delayed links' ends the kernel would not steer (no RPS): the line is slower
            **({"unsteered": unsteered} if (unsteered := list(lab.unsteered)) else {}),
            "all_ok": all(d["ok"] for d in done),
            # the peers share this machine's cores: how busy they kept them from `go`
            # until each had every blob, in all
            "nodes_cpu_s": round(sum(c for d in done if isinstance(c := d.get("cpu_s"), float)),
                                 1),
            "cores": os.cpu_count(),
            # minor page faults in the nodes over the same time (fresh memory touched)
            "nodes_page_faults": sum(int(d.get("page_faults", 0)) for d in done),  # type: ignore[call-overload]
            # honest peers cut off by a fetcher as too slow, and the bytes fetched in all
            "too_slow_cutoffs": sum(int(d.get("too_slow", 0)) for d in done),  # type: ignore[call-overload]
            "bytes_in_per_needed": round(sum(int(d.get("bytes_in", 0)) for d in done)  # type: ignore[call-overload]
                                         / (n * (n - 1) * mib * 2**20), 3),
            "slowest_peer_s": round(slowest, 2), "wall_s": round(wall, 2),
            "median_peer_s": round(sorted(float(d["seconds"]) for d in done)[n // 2], 2),  # type: ignore[arg-type]
            # per peer, when each of its fetches ended: is a late peer late on one blob?
            "peers_blobs_s": [d.get("blobs_s") for d in done],
            # per peer, every 0.5 s from `go`: (MiB received, CPU-s used) so far
            "peers_progress": [d.get("progress") for d in done],
            # request to first byte of every piece answer, all peers: RTT and queues
            "piece_first_byte_ms": spread([v for d in done for v in d.get("first_byte_ms", [])]),  # type: ignore[attr-defined]
            "lower_bound_s": round(bound, 2), "ratio_to_bound": round(slowest / bound, 2),
            **({"timeline": timeline} if timeline is not None else {})}


def send_all(procs: list[Any], command: str) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(command + "\n")
        p.stdin.flush()


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
    if sys.argv[1:2] == ["_tcp"]:
        import asyncio

        asyncio.run(tcp_exchange(json.loads(sys.argv[2])))
        return
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
    parser.add_argument("--transport", choices=["libp2p", "tcp"], default="libp2p",
                        help="tcp: the same exchange over plain TCP (the links' floor)")
    parser.add_argument("--slow-up", metavar="K:MBIT",
                        help="the last K peers upload at MBIT (downlinks stay at --mbit)")
    parser.add_argument("--declare-downlink", action="store_true",
                        help="nodes declare their downlink (more piece requests open)")
    parser.add_argument("--acks-first", action="store_true",
                        help="links send small packets (bare ACKs) ahead of queued data")
    parser.add_argument("--declare-uplink", type=float, metavar="SHARE",
                        help="every node declares SHARE of its uplink as its upload rate")
    parser.add_argument("--timeline", action="store_true",
                        help="sample the links' use every second (in the JSON)")
    parser.add_argument("--windows", type=int, default=1,
                        help="windows per run over the same nodes and connections, each "
                             "with new blobs (one row each; the first pays the dials)")
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
            results = dissemination(args)
        except Exception as exc:  # a run that does not finish is counted, not fatal
            results = [{"all_ok": False, "error": repr(exc)}]
        for result in results:
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
