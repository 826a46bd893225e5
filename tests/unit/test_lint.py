"""Static checks as tests, so the one test command also keeps the code clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=280,
                          check=False)


@pytest.mark.skipif(shutil.which("ruff") is None and not (ROOT / ".venv/bin/ruff").exists(),
                    reason="ruff not installed (pip install -e '.[dev]')")
def test_ruff_clean() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_protocol_and_typed_node_and_chain() -> None:
    result = _run(sys.executable, "-m", "mypy", "protocol", "node", "chain", "validator")
    assert result.returncode == 0, result.stdout + result.stderr
