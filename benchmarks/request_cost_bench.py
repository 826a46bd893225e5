"""What one small request costs: a piece-protocol HAVE (a bitfield) between two nodes.

A swarming node asks each holder for its bitfield every 0.5 s per blob it
gathers, and every piece request pays the same stream set-up, so this cost is
paid hundreds of times a second at scale. Both ends run in this process on
loopback, so the CPU counts both. Taken in turn, in the same run: streams as
this node builds them (`QuietStartStream`, node/mesh/p2p_yamux.py: a stream's
first 16 KiB read send no window update) and py-libp2p's own `YamuxStream`
(an update after nearly every read); the stream class is looked up when a
stream is made, so one pair of nodes serves both. Then, also in turn, a batched
bitfield ask (`/gradmesh/haves/1`, node/mesh/p2p_haves.py) on the stream kept
from the last answer against one on a fresh stream per ask.

    python benchmarks/request_cost_bench.py [--asks 400] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libp2p.stream_muxer.yamux import yamux as yamux_module

from benchmarks.mesh_bench import libp2p_pair, report
from node.mesh.p2p import P2PMesh
from node.mesh.p2p_haves import HaveBatches
from node.mesh.p2p_pieces import HAVE
from node.mesh.p2p_yamux import QuietStartStream

PY_LIBP2P_STREAM: Any = QuietStartStream.__base__  # py-libp2p's `YamuxStream`
VARIANTS = {"quiet_start": QuietStartStream, "py_libp2p": PY_LIBP2P_STREAM}


async def asks(a: P2PMesh, b: P2PMesh, digest: bytes, n: int) -> tuple[float, float, float]:
    """(CPU ms, wall ms, window updates) per HAVE request, over `n` in a row."""
    updates = 0
    send = PY_LIBP2P_STREAM.send_window_update

    async def counting(self: Any, increment: int, skip_lock: bool = False) -> None:
        nonlocal updates
        updates += 1
        await send(self, increment, skip_lock)

    async def run() -> None:
        for _ in range(n):
            await b._ask(a.peer_id, digest, HAVE, 1)

    PY_LIBP2P_STREAM.send_window_update = counting  # both variants inherit it
    try:
        cpu, started = time.process_time(), time.perf_counter()
        await b._call(run, timeout=300)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        PY_LIBP2P_STREAM.send_window_update = send
    return cpu / n * 1e3, wall / n * 1e3, updates / n


async def batched(a: P2PMesh, b: P2PMesh, digest: bytes, n: int, kept: bool
                  ) -> tuple[float, float]:
    """(CPU ms, wall ms) per batched bitfield ask, `n` in a row, on a kept stream or
    on a fresh one each time."""
    reuse = HaveBatches._reuse

    async def run() -> None:
        for _ in range(n):
            await b._have_batched(a.peer_id, digest, 1)

    if not kept:
        HaveBatches._reuse = lambda self, peer: None  # type: ignore[method-assign]
    try:
        cpu, started = time.process_time(), time.perf_counter()
        await b._call(run, timeout=300)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        HaveBatches._reuse = reuse  # type: ignore[method-assign]
    return cpu / n * 1e3, wall / n * 1e3


async def measure(n: int, rounds: int) -> dict[str, float]:
    a, b = await libp2p_pair(piece_requests_per_second=1e6)  # the limit is not measured
    try:
        ann = await a.announce(1, hashlib.shake_256(b"request cost").digest(1 << 20))
        runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in VARIANTS}
        await batched(a, b, ann.sha256, 20, True)  # the first stream, unmeasured
        for _ in range(rounds):
            for name, cls in VARIANTS.items():
                yamux_module.YamuxStream = cls  # type: ignore[misc]
                runs[name].append(await asks(a, b, ann.sha256, n))
            yamux_module.YamuxStream = QuietStartStream  # type: ignore[misc]
            for kept in (True, False):
                name = "haves_kept" if kept else "haves_fresh"
                runs.setdefault(name, []).append(
                    (*await batched(a, b, ann.sha256, n, kept), 0.0))
    finally:
        yamux_module.YamuxStream = QuietStartStream  # type: ignore[misc]
        await b.stop()
        await a.stop()
    out: dict[str, float] = {"asks": n, "rounds": rounds}
    for name, rs in runs.items():
        for i, field in enumerate(("cpu_ms", "wall_ms", "window_updates")):
            out[f"{name}_{field}"] = round(statistics.median(r[i] for r in rs), 2)
    out["cpu_ratio_quiet_to_py_libp2p"] = round(
        out["quiet_start_cpu_ms"] / out["py_libp2p_cpu_ms"], 3)
    out["cpu_ratio_haves_kept_to_fresh"] = round(
        out["haves_kept_cpu_ms"] / out["haves_fresh_cpu_ms"], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--asks", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = asyncio.run(measure(args.asks, args.rounds))
    report(result, args.json)


if __name__ == "__main__":
    main()
