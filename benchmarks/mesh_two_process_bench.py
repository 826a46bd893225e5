"""Loopback throughput with the two ends in two processes, as two nodes run.

benchmarks/mesh_bench.py puts both ends of a fetch in one process: one GIL then
carries the sender's and the receiver's Python work, which two nodes never share.
Here the serving end runs in a child process (`serve-raw` / `serve-libp2p` below)
and the fetching end in this one, for the raw TCP baseline (asyncio streams) and a
libp2p whole-blob fetch (TCP + Noise + yamux, SHA-256 checked), in the same run.
CPU seconds per GiB count both processes.

    python benchmarks/mesh_two_process_bench.py [--mib 64] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mesh_bench import CHUNK, raw_server
from node.mesh.p2p import P2PConfig, P2PMesh
from protocol.identity import Identity


def _blob(mib: int) -> bytes:
    return hashlib.shake_256(b"two-process bench").digest(mib << 20)


def _ident(n: int) -> Identity:
    return Identity.from_secret(hashlib.sha256(f"bench2-{n}".encode()).digest())


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def _commands() -> None:
    """Answer `cpu` with this process's CPU seconds until stdin closes."""
    loop = asyncio.get_running_loop()
    while (line := await loop.run_in_executor(None, sys.stdin.readline)):
        if line.strip() == "cpu":
            _say(cpu=time.process_time())


async def serve_raw(mib: int) -> None:
    server = await asyncio.start_server(raw_server(_blob(mib)), "127.0.0.1", 0)
    _say(port=server.sockets[0].getsockname()[1])
    await _commands()
    server.close()


async def serve_libp2p(mib: int) -> None:
    mesh = P2PMesh(_ident(1), P2PConfig(run="bench2"))
    await mesh.start()
    sha = await mesh.hold(1, _blob(mib))
    _say(addrs=list(mesh.dial_addrs), peer_id=mesh.peer_id, sha=sha.hex())
    await _commands()
    await mesh.stop()


class Child:
    """A serving process and its JSON lines."""

    def __init__(self, role: str, mib: int) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, role, "--mib", str(mib)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"serving process exited (rc {self.proc.wait()})")
        return dict(json.loads(line))

    def cpu(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("cpu\n")
        self.proc.stdin.flush()
        return float(self.read()["cpu"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


async def _timed(child: Child, fetch: Any, size: int) -> tuple[float, float]:
    """(MiB/s, CPU s per GiB of both processes) of one `fetch()`."""
    theirs, mine, started = child.cpu(), time.process_time(), time.perf_counter()
    await fetch()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - mine + child.cpu() - theirs
    return size / elapsed / 2**20, cpu / (size / 2**30)


async def raw_runs(mib: int, repeat: int) -> list[tuple[float, float]]:
    child, blob = Child("serve-raw", mib), _blob(mib)

    async def fetch() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", child.hello["port"])
        writer.write(b"\0" * 32)
        n = int.from_bytes(await reader.readexactly(8), "big")
        got = bytearray()
        while len(got) < n:
            got += await reader.read(CHUNK)
        writer.close()
        assert bytes(got) == blob

    try:
        return [await _timed(child, fetch, len(blob)) for _ in range(repeat)]
    finally:
        child.close()


async def libp2p_runs(mib: int, repeat: int) -> list[tuple[float, float]]:
    child, blob = Child("serve-libp2p", mib), _blob(mib)
    mesh = P2PMesh(_ident(2), P2PConfig(run="bench2", bootstrap=tuple(child.hello["addrs"])))
    await mesh.start()
    target = (child.hello["peer_id"], bytes.fromhex(child.hello["sha"]))

    async def fetch() -> None:
        assert await mesh.fetch(target, timeout=300) == blob
        mesh.forget(10)  # fetched blobs are kept: forget it so the next run fetches again

    try:
        return [await _timed(child, fetch, len(blob)) for _ in range(repeat)]
    finally:
        await mesh.stop()
        child.close()


async def measure(mib: int, repeat: int) -> dict[str, float]:
    raw, p2p = await raw_runs(mib, repeat), await libp2p_runs(mib, repeat)
    med = [statistics.median(r[i] for r in runs) for runs in (raw, p2p) for i in (0, 1)]
    return {"mib": mib, "repeat": repeat, "cores": os.cpu_count() or 0,
            "raw_tcp_mib_s": round(med[0], 1), "raw_tcp_cpu_s_per_gib": round(med[1], 2),
            "libp2p_fetch_mib_s": round(med[2], 1),
            "libp2p_fetch_cpu_s_per_gib": round(med[3], 2),
            "ratio_libp2p_to_raw": round(med[2] / med[0], 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("role", nargs="?", choices=["serve-raw", "serve-libp2p"],
                   help=argparse.SUPPRESS)
    p.add_argument("--mib", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.role == "serve-raw":
        asyncio.run(serve_raw(args.mib))
        return
    if args.role == "serve-libp2p":
        asyncio.run(serve_libp2p(args.mib))
        return
    result = asyncio.run(measure(args.mib, args.repeat))
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:<32} {value:>10}")


if __name__ == "__main__":
    main()
