"""Meshes on non-loopback addresses, each node inside a network namespace this test makes.

Network safety: nothing here runs a node in the root namespace. Two namespaces
joined by a veth pair (10.77.<n>.0/24) hold one node each; the nodes' allowlist
is that /24, and the namespaces are deleted afterwards (bounded in time).
Skipped where namespaces cannot be created (not root, no `ip`, no CAP_SYS_ADMIN).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("libp2p")

ROOT = Path(__file__).resolve().parents[2]

NODE_SCRIPT = textwrap.dedent('''
    import asyncio, hashlib, sys, time
    sys.path.insert(0, sys.argv[1])
    from node.mesh import AddressPolicy
    from node.mesh.p2p import P2PConfig, P2PMesh
    from tests.support.keys import identity

    ROLE, HOST, NET, BOOT = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    BLOB = hashlib.sha256(b"nat-blob").digest() * (1 << 16)  # 2 MiB, same in both

    async def main():
        cfg = P2PConfig(run="nat", listen_host=HOST, policy=AddressPolicy.of([NET]),
                        bootstrap=tuple(BOOT))
        mesh = P2PMesh(identity(1 if ROLE == "server" else 2), cfg)
        await mesh.start()
        try:
            if ROLE == "server":
                print("ADDR", mesh.dial_addrs[0], flush=True)
                deadline = time.monotonic() + 40
                while time.monotonic() < deadline and not mesh.stats().blobs_served:
                    await mesh.announce(1, BLOB)
                    await asyncio.sleep(0.2)
            else:
                sub = mesh.subscribe()
                async with asyncio.timeout(30):
                    ann = await anext(sub)
                    started = time.monotonic()
                    data = await mesh.fetch(ann, timeout=20)
                ok = data == BLOB
                print("FETCHED", ok, len(data) / (time.monotonic() - started) / 2**20, flush=True)
        finally:
            await mesh.stop()

    asyncio.run(main())
''')


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


@pytest.fixture
def veth_pair() -> Iterator[tuple[str, str, str]]:
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2")
    tag = f"gm{os.getpid() % 100000}"
    ns_a, ns_b = f"{tag}a", f"{tag}b"
    subnet = 1 + os.getpid() % 200
    made: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            if _ip("netns", "add", ns).returncode != 0:
                pytest.skip(f"cannot create network namespace {ns} here")
            made.append(ns)
        steps = [
            ("link", "add", f"{tag}va", "netns", ns_a, "type", "veth", "peer", "name",
             f"{tag}vb", "netns", ns_b),
            ("-n", ns_a, "addr", "add", f"10.77.{subnet}.1/24", "dev", f"{tag}va"),
            ("-n", ns_b, "addr", "add", f"10.77.{subnet}.2/24", "dev", f"{tag}vb"),
            ("-n", ns_a, "link", "set", f"{tag}va", "up"),
            ("-n", ns_b, "link", "set", f"{tag}vb", "up"),
            ("-n", ns_a, "link", "set", "lo", "up"),
            ("-n", ns_b, "link", "set", "lo", "up"),
        ]
        for step in steps:
            result = _ip(*step)
            if result.returncode != 0:
                pytest.skip(f"namespace setup failed: ip {' '.join(step)}: {result.stderr}")
        yield ns_a, ns_b, f"10.77.{subnet}"
    finally:
        for ns in made:  # deleting a namespace removes its end of the veth pair too
            _ip("netns", "del", ns)
        leftover = _ip("netns", "list").stdout
        assert ns_a not in leftover
        assert ns_b not in leftover


def test_two_namespaces_exchange_a_blob(veth_pair: tuple[str, str, str], tmp_path: Path) -> None:
    ns_a, ns_b, prefix = veth_pair
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    net = f"{prefix}.0/24"
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns_a, sys.executable, str(script), str(ROOT), "server",
         f"{prefix}.1", net], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = None
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # bounded: the server exits within 40 s
        assert line.startswith("ADDR "), line + (server.stderr.read() if server.stderr else "")
        addr = line.split()[1]
        assert addr.startswith(f"/ip4/{prefix}.1/tcp/")
        client = subprocess.run(
            ["ip", "netns", "exec", ns_b, sys.executable, str(script), str(ROOT), "client",
             f"{prefix}.2", net, addr], capture_output=True, text=True, timeout=60, check=False)
        assert "FETCHED True" in client.stdout, client.stdout + client.stderr
    finally:
        server.kill()
        server.wait(timeout=10)
        if server.stdout:
            server.stdout.close()
        if server.stderr:
            server.stderr.close()
