"""`gradmesh chain up | register | chain status` as a user runs them (real anvil)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from chain.launch import dev_accounts, find_anvil
from node.cli.chain import parse_amount
from node.runtime.keys import write_key_file
from protocol.identity import Identity

pytestmark = pytest.mark.skipif(find_anvil() is None,
                                reason="anvil not installed: npm install --prefix chain")
CLI = [sys.executable, "-m", "node.cli.main"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def read_line(proc: subprocess.Popen[str], deadline_s: float = 60) -> str:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + deadline_s
    buffer = ""
    while time.monotonic() < deadline:
        chunk = proc.stdout.readline()
        buffer += chunk or ""
        if buffer.endswith("\n"):
            return buffer
        if proc.poll() is not None:
            break
        time.sleep(0.05)  # polling a pipe with a deadline, not waiting for a guess
    raise AssertionError(f"no line from `chain up` (exit {proc.poll()}): {buffer!r}")


def answers(rpc: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []})
    request = urllib.request.Request(rpc, body.encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2):
            return True
    except OSError:
        return False


def exercise(up: subprocess.Popen[str], tmp_path: Path) -> dict[str, str]:
    info: dict[str, str] = json.loads(read_line(up))
    assert info["rpc"].startswith("http://127.0.0.1:")
    key = tmp_path / "miner.key"
    write_key_file(key, Identity.from_secret(bytes(dev_accounts(4)[3].key)))
    reg = run("register", "--rpc", info["rpc"], "--contract", info["contract"],
              "--key", str(key), "--role", "miner", "--stake", "2ether",
              "--peer-id", "16Uiu2HAm-test")
    assert reg.returncode == 0, reg.stderr
    assert json.loads(reg.stdout)["uid"] == 0
    status = run("chain", "status", "--rpc", info["rpc"], "--contract", info["contract"],
                 "--json")
    assert status.returncode == 0, status.stderr
    miners = json.loads(status.stdout)["miners"]
    assert [(m["address"], m["stake"]) for m in miners] == [
        (dev_accounts(4)[3].address, 2 * 10**18)]
    again = run("register", "--rpc", info["rpc"], "--contract", info["contract"],
                "--key", str(key), "--role", "miner", "--stake", "1ether", "--peer-id", "p")
    assert again.returncode == 2
    assert "AlreadyRegistered" in again.stderr
    too_long = run("register", "--rpc", info["rpc"], "--contract", info["contract"],
                   "--key", str(key), "--role", "validator", "--stake", "1ether",
                   "--peer-id", "x" * 65)
    assert too_long.returncode == 2
    assert "InvalidPeerId(65)" in too_long.stderr
    return info


def test_chain_up_register_status_and_clean_stop(tmp_path: Path) -> None:
    with subprocess.Popen([*CLI, "chain", "up", "--json"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as up:
        try:
            info = exercise(up, tmp_path)
        finally:
            up.send_signal(signal.SIGTERM)
            assert up.wait(timeout=30) == 0
    assert not answers(info["rpc"])  # anvil went down with it


def test_amounts_parse_with_units() -> None:
    assert parse_amount("1000") == 1000
    assert parse_amount("2ether") == 2 * 10**18
    assert parse_amount("1.5 gwei") == 1_500_000_000
    assert parse_amount("1e18") == 10**18
