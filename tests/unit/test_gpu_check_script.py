"""benchmarks/gpu_check.py on the CPU with the tiny model: the script a GPU machine
runs keeps working where no GPU is (its figures only mean something on one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_on_the_cpu() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--model", "tiny",
                          "--steps", "2", "--rows", "2", "--seq-len", "32",
                          "--codec-side", "256", "--no-compile"],  # compile: docs/engine.md
                         capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["outer_step"]["identical"] is True
    assert set(result["inner_loop"]) == {"fp32", "bf16"}
    assert result["fsdp2"]["outer_step_identical"] is True
    assert result["fsdp2"]["payload_identical"] is True  # on the CPU both are exact
    assert result["repeat"]["payload_identical"] is True
    assert result["codec"]["encode_gb_s"] > 0
    assert result["validator"]["bf16"]["evaluations_per_min"] > 0
