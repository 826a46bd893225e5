"""Loopback throughput with the two ends in two processes, as two nodes run.

benchmarks/mesh_bench.py puts both ends of a fetch in one process: one GIL then
carries the sender's and the receiver's Python work, which two nodes never share.
Here the serving end runs in a child process (`serve-raw` / `serve-libp2p` below)
and the fetching end in this one, in the same run and taken in turn: two raw TCP
baselines (asyncio streams, the stack a Python service uses; and a blocking
socket's `recv_into` one buffer, the floor of any Python reader) and a libp2p
whole-blob fetch (TCP + Noise + yamux, SHA-256 checked). CPU seconds per GiB
count both processes.

    python benchmarks/mesh_two_process_bench.py [--mib 64] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mesh_bench import CHUNK, raw_server, report
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


class RawEnd:
    """The raw TCP baseline: a serving child, and one fetch of its blob per call,
    read with asyncio streams (chunks kept, joined once, as the libp2p fetch does)."""

    name = "raw_tcp"

    def __init__(self, mib: int) -> None:
        self.child, self.blob = Child("serve-raw", mib), _blob(mib)

    async def start(self) -> None:
        pass

    async def fetch(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.child.hello["port"])
        writer.write(b"\0" * 32)
        n = int.from_bytes(await reader.readexactly(8), "big")
        parts, got = [], 0
        while got < n:
            parts.append(await reader.read(CHUNK))
            got += len(parts[-1])
        writer.close()
        assert b"".join(parts) == self.blob

    async def stop(self) -> None:
        self.child.close()


class RecvIntoEnd(RawEnd):
    """The floor of any Python reader: a blocking socket's `recv_into` one buffer
    sized in advance (in a worker thread), no event loop in the data path."""

    name = "raw_recv_into"

    async def fetch(self) -> None:
        await asyncio.to_thread(self._fetch)

    def _fetch(self) -> None:
        with socket.create_connection(("127.0.0.1", self.child.hello["port"])) as sock:
            sock.sendall(b"\0" * 32)
            n = int.from_bytes(_recv_exactly(sock, 8), "big")
            assert _recv_exactly(sock, n) == self.blob


def _recv_exactly(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        step = sock.recv_into(view[got:], min(CHUNK, n - got))
        if not step:
            raise ConnectionError("the serving end hung up early")
        got += step
    return buf


class Libp2pEnd:
    """A libp2p whole-blob fetch from a serving child, forgotten after each call."""

    name = "libp2p_fetch"

    def __init__(self, mib: int) -> None:
        self.child, self.blob = Child("serve-libp2p", mib), _blob(mib)
        hello = self.child.hello
        self.mesh = P2PMesh(_ident(2), P2PConfig(run="bench2", bootstrap=tuple(hello["addrs"])))
        self.target = (hello["peer_id"], bytes.fromhex(hello["sha"]))

    async def start(self) -> None:
        await self.mesh.start()

    async def fetch(self) -> None:
        assert await self.mesh.fetch(self.target, timeout=300) == self.blob
        self.mesh.forget(10)  # fetched blobs are kept: forget it so the next fetch is real

    async def stop(self) -> None:
        await self.mesh.stop()
        self.child.close()


async def measure(mib: int, repeat: int) -> dict[str, float]:
    """The three fetches taken in turn (after one unmeasured warm-up each), so a busy
    moment on a shared machine falls on all of them; each ratio is the median of the
    rounds' ratios."""
    ends: list[Any] = [RawEnd(mib), RecvIntoEnd(mib), Libp2pEnd(mib)]
    runs: list[list[tuple[float, float]]] = [[] for _ in ends]
    try:
        for end in ends:
            await end.start()
            await end.fetch()
        for _ in range(repeat):
            for end, out in zip(ends, runs, strict=True):
                out.append(await _timed(end.child, end.fetch, mib << 20))
    finally:
        for end in ends:
            await end.stop()
    result: dict[str, float] = {"mib": mib, "repeat": repeat, "cores": os.cpu_count() or 0}
    for end, rs in zip(ends, runs, strict=True):
        result[f"{end.name}_mib_s"] = round(statistics.median(r[0] for r in rs), 1)
        result[f"{end.name}_cpu_s_per_gib"] = round(statistics.median(r[1] for r in rs), 2)
    for end, rs in zip(ends[:2], runs[:2], strict=True):
        ratio = statistics.median(p[0] / r[0] for r, p in zip(rs, runs[2], strict=True))
        result[f"ratio_libp2p_to_{end.name}"] = round(ratio, 3)
    return result


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
    report(result, args.json)


if __name__ == "__main__":
    main()
