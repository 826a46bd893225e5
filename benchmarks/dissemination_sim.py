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
    python benchmarks/dissemination_sim.py --validate runs.jsonl --host-mibps 80
    python benchmarks/dissemination_sim.py --loopback   # the swarming test's set-up

`--validate` reads JSON lines of `benchmarks/mesh_netns_bench.py dissemination` (peers,
blob_mib, mbit, rtt, slowest_peer_s, fetch) and prints the prediction of the run's
policy (swarming, or whole blobs from the authors) for each completed run, and its
error. `--host-mibps` caps each peer's bytes in + out (the lab's peers
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
from node.sim.dissemination import Link, Policy, Scenario, simulate

MIB = 1 << 20
PROFILES = {
    # Covenant-72B's object-store caps: 110 Mb/s up, 500 Mb/s down
    "covenant": [Link(110e6, 500e6, 0.05)],
    "1g": [Link(1e9, 1e9, 0.02)],
    # a third each: Covenant-capped, 1 Gb/s, and home fibre (40 up / 300 down)
    "mixed": [Link(110e6, 500e6, 0.05), Link(1e9, 1e9, 0.02), Link(40e6, 300e6, 0.03)],
}
AUTHORS = Workload().gathered
PIECES = 24  # pieces per contribution in the table (run time grows with it)


def links_for(profile: str, n: int) -> tuple[Link, ...]:
    kinds = PROFILES[profile]
    return tuple(kinds[i % len(kinds)] for i in range(n))


def one(model: str, size: int, n: int, profile: str, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    authors = tuple(sorted(int(a) for a in rng.choice(n, size=min(AUTHORS, n), replace=False)))
    links = links_for(profile, n)
    compute = plan(model, Box(), Workload())["window"]["compute_s"]
    row: dict[str, Any] = {"model": model, "mib": round(size / MIB, 1), "peers": n,
                           "profile": profile, "compute_s": round(compute, 1)}
    for policy in ("direct", "swarm"):
        start = time.perf_counter()
        out = simulate(Scenario(links, authors, size, policy,
                                piece=max(MIB, -(-size // PIECES))), seed)
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


def validate(path: Path, host_mibps: float | None) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        run = json.loads(line)
        if not run.get("all_ok") or "peers" not in run:  # summaries, unfinished runs
            continue
        policy: Policy = "direct" if run.get("fetch") == "whole blobs" else "swarm"
        n, size = int(run["peers"]), int(float(run["blob_mib"]) * MIB)
        rtt = float(run.get("rtt_ms_measured", {}).get("min_ms") or run.get("rtt_ms", 0)) / 1e3
        links = tuple(Link(run["mbit"] * 1e6, run["mbit"] * 1e6, rtt) for _ in range(n))
        host = None if host_mibps is None else 2 * host_mibps * MIB * 8 / n
        sim = simulate(Scenario(links, tuple(range(n)), size, policy, host_bps=host))
        measured = float(run["slowest_peer_s"])
        out.append({"peers": n, "policy": policy, "blob_mib": run["blob_mib"],
                    "mbit": run["mbit"],
                    "rtt_ms": round(rtt * 1e3, 1), "measured_s": measured,
                    "simulated_s": round(sim.slowest_s, 2), "bound_s": round(sim.bound_s, 2),
                    "error": round(sim.slowest_s / measured - 1, 3)})
    return out


def loopback() -> list[dict[str, Any]]:
    """tests/network/test_mesh_p2p.py::test_swarming_spends_the_authors_upload_about_once:
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
    p.add_argument("--host-mibps", type=float)
    p.add_argument("--loopback", action="store_true")
    args = p.parse_args()
    if args.loopback:
        for r in loopback():
            print(json.dumps(r))
        return
    if args.validate:
        for r in validate(args.validate, args.host_mibps):
            print(json.dumps(r))
        return
    rows = []
    for model in args.models:
        size = plan(model, Box(), Workload())["window"]["bytes_published"]
        for n in args.peers:
            for profile in args.profiles:
                rows.append(one(model, size, n, profile, args.seed))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
