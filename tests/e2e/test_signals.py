"""SIGTERM to a miner process mid-window: it exits cleanly, and on restart resumes from
its checkpoint and rejoins with the network's θ (anvil, two miner processes, libp2p)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chain.client import ChainParams
from chain.deploy import deploy_network
from chain.launch import AnvilChain, find_anvil
from node.mesh.p2p import P2PConfig, P2PMesh
from protocol.identity import Identity

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(find_anvil() is None, reason="anvil not installed "
                                 "(npm install --prefix chain)")]
RUN = "sigtest"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/snapshot", timeout=5) as r:
            return json.loads(r.read())["nodes"][0]  # type: ignore[no-any-return]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _until(cond: Callable[[], Any], timeout: float, what: str,
           procs: list[subprocess.Popen[bytes]]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        for p in procs:
            assert p.poll() is None, f"a service exited early ({p.args!r:.120})"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture
def chain() -> Iterator[tuple[str, str, AnvilChain]]:
    with AnvilChain(block_time=0.5) as anvil:
        params = ChainParams(blocks_per_window=20, windows_per_epoch=2, reveal_windows=1,
                             immunity_windows=2, unstake_cooldown_windows=2)
        contract = deploy_network(anvil.w3, anvil.accounts[0].key, params, fund=10**20)
        yield anvil.rpc_url, contract, anvil


def _miner(tmp: Path, name: str, account: int, rpc: str, contract: str, port: int, http: int,
           bootstrap: str | None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "node.cli.main", "miner", "--dev-account", str(account),
            "--rpc", rpc, "--contract", contract, "--run", RUN, "--inner-steps", "4",
            "--data-dir", str(tmp / name), "--port", str(port), "--http", f"127.0.0.1:{http}"]
    if bootstrap:
        args += ["--bootstrap", bootstrap]
    with (tmp / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def _digest_at(status: dict[str, Any] | None, window: int) -> str | None:
    for point in (status or {}).get("history", []):
        if point["window"] == window:
            return str(point["param_digest"])
    return None


def test_sigterm_mid_window_then_resume_and_rejoin(
        tmp_path: Path, chain: tuple[str, str, AnvilChain]) -> None:
    rpc, contract, anvil = chain
    a_port, a_http, b_port, b_http = (_free_port() for _ in range(4))
    a_id = Identity.from_secret(bytes(anvil.accounts[1].key))
    a_peer = P2PMesh(a_id, P2PConfig(run=RUN)).peer_id  # computed, nothing is started
    boot = f"/ip4/127.0.0.1/tcp/{a_port}/p2p/{a_peer}"
    a = _miner(tmp_path, "a", 1, rpc, contract, a_port, a_http, None)
    b = _miner(tmp_path, "b", 2, rpc, contract, b_port, b_http, boot)
    procs = [a, b]
    try:
        _until(lambda: len((_status(b_http) or {}).get("history", [])) >= 1, 240,
               "miner b to apply a window", procs)
        _until(lambda: (_status(b_http) or {}).get("state") == "training", 60,
               "miner b to be mid-window (training)", procs)
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=60) == 0, (tmp_path / "b.log").read_text()[-3000:]
        log = (tmp_path / "b.log").read_text()
        assert "state flushed" in log

        b = _miner(tmp_path, "b", 2, rpc, contract, b_port, b_http, boot)
        procs = [a, b]
        synced = _until(lambda: next((e["event"] for e in (_status(b_http) or {}).get(
            "timeline", []) if e["event"].startswith("synced")), None), 120,
            "the restarted miner to sync", procs)
        assert "checkpoint of window" in synced, synced

        def rejoined() -> bool:
            b_status = _status(b_http) or {}
            published = [p for p in b_status.get("history", []) if p["compression_ratio"]]
            if not published:
                return False
            w = published[-1]["window"]
            return _digest_at(_status(a_http), w) == published[-1]["param_digest"]

        _until(rejoined, 180, "the restarted miner to publish and match a's θ", procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    assert a.returncode == 0, (tmp_path / "a.log").read_text()[-3000:]
