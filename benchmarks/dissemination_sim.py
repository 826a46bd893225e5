"""One window's dissemination at internet scale, simulated (node/sim/dissemination.py).

For each model size (the contribution's bytes from `gradmesh plan`), peer count and
link profile, every peer gathers the window's selected contributions (16 authors, as
`plan` assumes); the table gives the slowest peer's time under the direct policy
(each contribution fetched whole from its author) and under swarming, both against
the bandwidth lower bound, the mean upload an author spent (in contributions), and a
miner's compute utilisation with `plan`'s compute time for the window (8 GPUs at
40% MFU): synchronous (train, then gather) and overlapped (gather window w while
training w+1).

    python benchmarks/dissemination_sim.py                   # the full table
    python benchmarks/dissemination_sim.py --models 1b --peers 20 --profiles covenant
    python benchmarks/dissemination_sim.py --validate runs.jsonl --tcp tcp_runs.jsonl
    python benchmarks/dissemination_sim.py --loopback   # the swarming test's set-up
    python benchmarks/dissemination_sim.py --models 1b --declared --acks ahead

`--declared`: every node declares its link's rates, so its upload slots and requests
in flight follow them (node/mesh/p2p_pieces.py); `--acks ahead`: ACKs pass an uplink's
queued data instead of sharing it fairly (node/sim/dissemination.py, `Scenario.acks`).

`--validate` reads JSON lines of `benchmarks/mesh_netns_bench.py dissemination` (peers,
blob_mib, mbit, rtt, slowest_peer_s, fetch) and prints the prediction of the run's
policy (swarming, or whole blobs from the authors) for each completed run, and its
error. `--tcp` names runs of the same exchange over plain TCP in the same lab
(`mesh_netns_bench.py dissemination --transport tcp`): their bandwidth bound over their
slowest peer is what the shaped links carry as payload (Ethernet, IP and TCP headers,
ACKs, TCP's own dynamics), and the simulated links carry that share of their rate.
`--host-mibps` caps each peer's bytes in + out (the lab's peers
share one machine's CPU: its measured libp2p throughput, `benchmarks/mesh_bench.py`,
times 2 for both ends, divided by the peers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.engine.plan import Box, Workload, plan
from node.mesh.p2p_pieces import fetch_slots, upload_slots
from node.mesh.pieces import IN_FLIGHT, PIECE_BYTES
from node.sim.dissemination import Acks, Link, Policy, Scenario, simulate

MIB = 1 << 20
PROFILES = {
    # Covenant-72B's object-store caps: 110 Mb/s up, 500 Mb/s down
    "covenant": [Link(110e6, 500e6, 0.05)],
    "1g": [Link(1e9, 1e9, 0.02)],
    # a third each: Covenant-capped, 1 Gb/s, and home fibre (40 up / 300 down)
    "mixed": [Link(110e6, 500e6, 0.05), Link(1e9, 1e9, 0.02), Link(40e6, 300e6, 0.03)],
}
AUTHORS = Workload().gathered
PIECES = 24  # pieces per contribution in the table (run time grows with it), or fewer
# for contributions under 24 of the mesh's pieces


def links_for(profile: str, n: int) -> tuple[Link, ...]:
    kinds = PROFILES[profile]
    return tuple(kinds[i % len(kinds)] for i in range(n))


def one(model: str, size: int, n: int, profile: str, seed: int,
        knobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of the table; `knobs` are further `Scenario` fields (the model's ACKs,
    the fetchers' requests in flight, the serving's share of an uplink)."""
    rng = np.random.default_rng(seed)
    authors = tuple(sorted(int(a) for a in rng.choice(n, size=min(AUTHORS, n), replace=False)))
    links = links_for(profile, n)
    knobs = dict(knobs or {})
    if knobs.pop("declared", False):  # every operator declares both rates of its link
        knobs["holder_slots"] = tuple(upload_slots(link.up_bps / 8) for link in links)
        knobs["in_flight"] = min(fetch_slots(link.down_bps / 8) for link in links)
    compute = plan(model, Box(), Workload())["window"]["compute_s"]
    row: dict[str, Any] = {"model": model, "mib": round(size / MIB, 1), "peers": n,
                           "profile": profile, "compute_s": round(compute, 1)}
    for policy in ("direct", "swarm"):
        start = time.perf_counter()
        out = simulate(Scenario(links, authors, size, policy,
                                piece=max(PIECE_BYTES, -(-size // PIECES)), **knobs),
                       seed)
        row[policy] = {"slowest_s": round(out.slowest_s, 1), "ratio": round(out.ratio, 2),
                       "author_upload": round(out.author_upload, 2),
                       "sync_util": round(compute / (compute + out.slowest_s), 4),
                       "overlap_util": round(min(1.0, compute / out.slowest_s), 4),
                       "sim_s": round(time.perf_counter() - start, 1)}
        row["bound_s"] = round(out.bound_s, 1)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | MiB | peers | links | bound s | direct s (×) | swarm s (×) | "
            "author upload direct / swarm | compute s | utilisation sync / overlapped "
            "(swarm) |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        d, s = r["direct"], r["swarm"]
        lines.append(
            f"| {r['model']} | {r['mib']:,} | {r['peers']} | {r['profile']} | {r['bound_s']:,} "
            f"| {d['slowest_s']:,} ({d['ratio']}) | {s['slowest_s']:,} ({s['ratio']}) "
            f"| {d['author_upload']} / {s['author_upload']} | {r['compute_s']:,} "
            f"| {100 * s['sync_util']:.1f}% / {100 * s['overlap_util']:.1f}% |")
    return "\n".join(lines)


def lab_runs(path: Path) -> list[dict[str, Any]]:
    """The completed runs in a file of `mesh_netns_bench.py dissemination` lines."""
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in runs if r.get("all_ok") and "peers" in r]  # no summaries


def direct_bound(run: dict[str, Any]) -> float:
    """Seconds plain TCP needs at the shaped rates: every blob goes from its author to
    each other peer, so each peer sends and receives (N-1) blobs through its links."""
    n, bits = int(run["peers"]), float(run["blob_mib"]) * MIB * 8
    up = run.get("up_mbit") or [run["mbit"]] * n
    return max((n - 1) * bits / (min(float(u), float(run["mbit"])) * 1e6) for u in up)


def link_goodput(path: Path | None) -> float:
    """The share of the shaped rate the lab's links carry as payload and ACKs (the
    simulator adds the ACKs itself): the median of bound / slowest peer over plain-TCP
    runs, whose slowest peer sent and received as many bytes, so its uplink also carried
    the ACKs of what it sent (1.0 without such runs)."""
    if path is None:
        return 1.0
    shares = sorted(direct_bound(r) / r["slowest_peer_s"] * (1 + Scenario.ack_share)
                    for r in lab_runs(path) if r.get("fetch") == "plain tcp")
    if not shares:
        raise SystemExit(f"{path}: no completed plain-TCP run")
    return float(shares[len(shares) // 2])


def validate(path: Path, host_mibps: float | None, goodput: float = 1.0,
             acks: Acks = "shared") -> list[dict[str, Any]]:
    out = []
    for run in lab_runs(path):
        if run.get("fetch") == "plain tcp":
            continue
        policy: Policy = "direct" if run.get("fetch") == "whole blobs" else "swarm"
        n, size = int(run["peers"]), int(float(run["blob_mib"]) * MIB)
        rtt = float(run.get("rtt_ms_measured", {}).get("min_ms") or run.get("rtt_ms", 0)) / 1e3
        up = run.get("up_mbit") or [run["mbit"]] * n  # per peer (`--slow-up`)
        links = tuple(Link(u * 1e6 * goodput, run["mbit"] * 1e6 * goodput, rtt) for u in up)
        host = None if host_mibps is None else 2 * host_mibps * MIB * 8 / n
        # the lab's slow peers declare their uplink (`upload_rate`), and serve fewer at once
        slots = tuple(upload_slots(u * 1e6 / 8 if u < run["mbit"] else 0) for u in up)
        sim = simulate(Scenario(links, tuple(range(n)), size, policy, host_bps=host,
                                # runs before 2026-12-05 (late) cut blobs into 1 MiB pieces
                                piece=int(run.get("piece_bytes", 1 << 20)),
                                holder_slots=slots, in_flight=run.get("in_flight", IN_FLIGHT),
                                # runs before requests were pipelined took 3 round trips
                                request_rtts=run.get("request_rtts", 3), acks=acks))
        measured = float(run["slowest_peer_s"])
        out.append({"peers": n, "policy": policy, "blob_mib": run["blob_mib"],
                    "mbit": run["mbit"], "up_mbit": run.get("up_mbit"),
                    "link_goodput": round(goodput, 3),
                    "rtt_ms": round(rtt * 1e3, 1), "measured_s": measured,
                    "simulated_s": round(sim.slowest_s, 2), "bound_s": run["lower_bound_s"],
                    "error": round(sim.slowest_s / measured - 1, 3)})
    return out


def loopback() -> list[dict[str, Any]]:
    """tests/network/test_mesh_swarm.py::test_swarming_spends_the_authors_upload_about_once:
    one author with a 4 MiB/s uplink, six fetchers, loopback (links far faster)."""
    fast = Link(1e10, 1e10, 0.0)
    links = (Link(4 * MIB * 8, 1e10, 0.0),) + (fast,) * 6
    out = []
    for policy in ("direct", "swarm"):
        o = simulate(Scenario(links, (0,), 8 * MIB + 12345, policy))
        out.append({"policy": policy, "slowest_s": round(o.slowest_s, 2),
                    "author_upload": round(o.author_upload, 2), "bound_s": round(o.bound_s, 2)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["1b", "8b", "72b"])
    p.add_argument("--peers", nargs="+", type=int, default=[20, 70])
    p.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validate", type=Path)
    p.add_argument("--tcp", type=Path, help="plain-TCP runs in the same lab (link goodput)")
    p.add_argument("--host-mibps", type=float)
    p.add_argument("--loopback", action="store_true")
    p.add_argument("--acks", default="shared", choices=["shared", "ahead"],
                   help="how ACKs meet an uplink's data (node/sim/dissemination.py)")
    p.add_argument("--in-flight", type=int, default=IN_FLIGHT,
                   help="piece requests a fetcher keeps open (8: a declared downlink)")
    p.add_argument("--upload-share", type=float, default=1.0,
                   help="what a peer's serving may take of its uplink")
    p.add_argument("--declared", action="store_true",
                   help="every node declares its link's rates (--uplink-mbit, "
                        "--downlink-mbit): upload slots and requests in flight follow them")
    args = p.parse_args()
    if args.loopback:
        for r in loopback():
            print(json.dumps(r))
        return
    if args.validate:
        for r in validate(args.validate, args.host_mibps, link_goodput(args.tcp), args.acks):
            print(json.dumps(r))
        return
    rows = []
    knobs = {"acks": args.acks, "in_flight": args.in_flight,
             "upload_share": args.upload_share, "declared": args.declared}
    for model in args.models:
        size = plan(model, Box(), Workload())["window"]["bytes_published"]
        for n in args.peers:
            for profile in args.profiles:
                rows.append(one(model, size, n, profile, args.seed, knobs))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
