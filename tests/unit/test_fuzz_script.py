"""The decoder fuzzer (benchmarks/fuzz_decoders.py) on a few hundred inputs: it runs,
its mutations reach every decoder, and none of them fails untyped."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_decoders.py"


def test_fuzzer_runs_and_finds_no_untyped_failure(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("fuzz_decoders", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    result = fuzz.run(300, seed=1, out=tmp_path)
    assert result["decoder_calls"] == 300 * 6
    assert 0 < result["accepted_calls"] < result["decoder_calls"]  # both answers occur
    assert result["crashes_total"] == 0, result
    assert not list(tmp_path.iterdir())
