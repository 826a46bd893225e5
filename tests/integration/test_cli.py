"""The `gradmesh` command as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

FAST = ["--miners", "2", "--rounds", "2", "--inner-steps", "3", "--batch-size", "2",
        "--seq-len", "32", "--eval-batches", "1", "--corpus-mib", "0.5"]


def gradmesh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli.main", *args], capture_output=True,
                          text=True, timeout=240, check=False,
                          env={**os.environ, **(env or {})})


def test_simulate_json_has_the_documented_fields() -> None:
    result = gradmesh("simulate", *FAST, "--index-coding", "gap", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    for key in ("optimizer", "miners", "rounds", "heldout_loss", "wire_bytes_per_miner_round",
                "dense_fp32_bytes", "compression_ratio", "params_identical"):
        assert key in summary
    assert summary["optimizer"] == "sparseloco"
    assert summary["miners"] == 2
    assert summary["rounds"] == 2
    assert len(summary["heldout_loss"]) == 3
    assert summary["params_identical"] is True
    assert summary["compression_ratio"] == summary["dense_fp32_bytes"] / summary[
        "wire_bytes_per_miner_round"]
    assert "held-out loss" in result.stderr  # the summary table


def test_data_prepare_then_simulate_on_the_shards(tmp_path: Path) -> None:
    text = tmp_path / "text"
    text.mkdir()
    for i in range(40):
        (text / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox " * 200)
    out = tmp_path / "shards"
    prepared = gradmesh("data", "prepare", str(text), "--out", str(out))
    assert prepared.returncode == 0, prepared.stderr
    assert (out / "manifest.json").exists()
    result = gradmesh("simulate", *FAST, "--data", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["config"]["data"] == str(out)


def test_keygen_writes_an_owner_only_key(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    result = gradmesh("keygen", env={"GRADMESH_KEY": str(key)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("0x")
    assert len(result.stdout.strip()) == 42
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = gradmesh("keygen", "--key", str(key))
    assert again.returncode == 2
    assert "refusing" in again.stderr


def test_bad_input_gives_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    missing = gradmesh("simulate", *FAST, "--data", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "gradmesh: error:" in missing.stderr
    assert "Traceback" not in missing.stderr
    unknown = gradmesh("simulate", "--model", "huge")
    assert unknown.returncode == 2
    assert "invalid choice" in unknown.stderr
