"""Mesh transport figures on loopback, all in one run:

1. raw TCP socket throughput (asyncio streams, both ends in this process): the baseline;
2. libp2p blob fetch throughput (TCP + Noise + yamux, SHA-256 checked) between two
   `P2PMesh` hosts in this process, whole (`/gradmesh/blob/2`) and piece by piece
   (`/gradmesh/piece/1`, one source), each with its ratio to the baseline and the CPU
   seconds per GiB moved (the whole process: both ends, as for the baseline);
3. the asyncio<->trio bridge: round-trip latency of a no-op call through the dedicated
   trio thread (what `P2PMesh` uses) and through trio guest mode on the asyncio loop;
4. whether a transfer keeps flowing while the asyncio loop is blocked (thread: yes).

Usage: python benchmarks/mesh_bench.py [--mib 64] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio

from node.mesh.p2p import P2PConfig, P2PMesh
from protocol.identity import Identity

CHUNK = 1 << 20


def raw_server(blob: bytes) -> Any:
    """An asyncio stream handler: a 32-byte request, then the blob's length and the blob."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(32)
        writer.write(len(blob).to_bytes(8, "big"))
        view = memoryview(blob)
        for i in range(0, len(blob), CHUNK):
            writer.write(view[i:i + CHUNK])
            await writer.drain()
        writer.close()

    return serve


async def raw_tcp(blob: bytes) -> tuple[float, float]:
    server = await asyncio.start_server(raw_server(blob), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cpu, started = time.process_time(), time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\0" * 32)
    n = int.from_bytes(await reader.readexactly(8), "big")
    got = bytearray()
    while len(got) < n:
        got += await reader.read(CHUNK)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    writer.close()
    server.close()
    await server.wait_closed()
    assert bytes(got) == blob
    return len(blob) / elapsed / 2**20, cpu / (len(blob) / 2**30)


def _ident(n: int) -> Identity:
    import hashlib

    return Identity.from_secret(hashlib.sha256(f"bench-{n}".encode()).digest())


async def libp2p_pair(**config: Any) -> tuple[P2PMesh, P2PMesh]:
    a = P2PMesh(_ident(1), P2PConfig(run="bench", **config))
    await a.start()
    b = P2PMesh(_ident(2), P2PConfig(run="bench", bootstrap=a.dial_addrs, **config))
    await b.start()
    return a, b


async def libp2p_fetch(a: P2PMesh, b: P2PMesh, blob: bytes, *, swarm: bool = False,
                       window: int = 1) -> tuple[float, float]:
    """(MiB/s, CPU s per GiB of the whole process: both ends) of one fetch, whole over
    `/gradmesh/blob/2` or piece by piece (`swarm`)."""
    ann = await a.announce(window, blob)
    cpu, started = time.process_time(), time.perf_counter()
    got = await b.fetch(ann if swarm else (a.peer_id, ann.sha256), timeout=300)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert got == blob
    b.forget(window + 1)
    return len(blob) / elapsed / 2**20, cpu / (len(blob) / 2**30)


async def thread_bridge_latency(a: P2PMesh, calls: int) -> float:
    async def noop() -> int:
        return 1

    started = time.perf_counter()
    for _ in range(calls):
        await a._call(noop, timeout=5)
    return (time.perf_counter() - started) / calls * 1e6


async def guest_bridge_latency(calls: int) -> float:
    """Same no-op round trip with trio as a guest on this asyncio loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    ready: asyncio.Future[tuple[trio.lowlevel.TrioToken, trio.Nursery, trio.Event]] = (
        loop.create_future())

    async def trio_main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            ready.set_result((trio.lowlevel.current_trio_token(), nursery, stop))
            await stop.wait()
            nursery.cancel_scope.cancel()

    def soon_threadsafe(fn: Callable[[], None]) -> None:
        loop.call_soon_threadsafe(fn)

    def soon(fn: Callable[[], None]) -> None:
        loop.call_soon(fn)

    trio.lowlevel.start_guest_run(
        trio_main, run_sync_soon_threadsafe=soon_threadsafe, run_sync_soon_not_threadsafe=soon,
        done_callback=lambda outcome: done.set_result(None), host_uses_signal_set_wakeup_fd=True)
    _token, nursery, stop = await ready

    async def one() -> None:
        fut: asyncio.Future[int] = loop.create_future()

        async def runner() -> None:
            fut.set_result(1)  # same thread: no thread-safe hop needed

        nursery.start_soon(runner)
        await fut

    started = time.perf_counter()
    for _ in range(calls):
        await one()
    elapsed = time.perf_counter() - started
    stop.set()
    await done
    return elapsed / calls * 1e6


async def fetch_while_loop_blocked(a: P2PMesh, b: P2PMesh, blob: bytes) -> float:
    """Fraction of a fetch done while the asyncio loop was blocked for the whole 1st second."""
    ann = await a.announce(2, blob)
    before = b.stats().bytes_in
    task = asyncio.ensure_future(b.fetch(ann, timeout=300))
    await asyncio.sleep(0.05)  # benchmark pacing, not a test: let the request go out
    time.sleep(1.0)  # block the event loop (CPU work or a GIL-releasing torch op)
    moved = b.stats().bytes_in - before
    await task
    return moved / len(blob)


def med(runs: list[tuple[float, float]], i: int) -> float:
    return statistics.median(r[i] for r in runs)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    blob = os.urandom(args.mib << 20)
    raw = [await raw_tcp(blob) for _ in range(args.repeat)]
    a, b = await libp2p_pair()
    try:
        p2p = [await libp2p_fetch(a, b, blob, window=i) for i in range(args.repeat)]
        swarm = [await libp2p_fetch(a, b, blob, swarm=True, window=10 + i)
                 for i in range(args.repeat)]
        thread_us = await thread_bridge_latency(a, 2000)
        blocked_fraction = await fetch_while_loop_blocked(a, b, blob)
    finally:
        await b.stop()
        await a.stop()
    guest_us = await guest_bridge_latency(2000)
    result = {
        "blob_mib": args.mib,
        "cpus": os.cpu_count(),
        "libp2p_threads_left": sum(t.name.startswith("libp2p-") for t in threading.enumerate()),
        "raw_tcp_mib_s": round(med(raw, 0), 1),
        "raw_tcp_cpu_s_per_gib": round(med(raw, 1), 2),
        "libp2p_fetch_mib_s": round(med(p2p, 0), 1),
        "libp2p_fetch_cpu_s_per_gib": round(med(p2p, 1), 2),
        "ratio_libp2p_to_raw": round(med(p2p, 0) / med(raw, 0), 3),
        "libp2p_swarm_fetch_mib_s": round(med(swarm, 0), 1),
        "libp2p_swarm_fetch_cpu_s_per_gib": round(med(swarm, 1), 2),
        "ratio_swarm_to_raw": round(med(swarm, 0) / med(raw, 0), 3),
        "bridge_thread_roundtrip_us": round(thread_us, 1),
        "bridge_guest_roundtrip_us": round(guest_us, 1),
        "fetch_progress_while_asyncio_blocked_1s": round(blocked_fraction, 3),
    }
    report(result, args.json)


def report(result: dict[str, Any], as_json: bool) -> None:
    """One JSON line, or one figure a line, name and value aligned."""
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:<42} {value:>10}")


if __name__ == "__main__":
    asyncio.run(main())
