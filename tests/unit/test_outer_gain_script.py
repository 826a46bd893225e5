"""benchmarks/outer_gain.py: its figures on hand-made exchanges, and a probed toy run
whose held-out curve is the optimizer study's record of the same run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
TOY = ["--only", "SparseLoCo base", "--rounds", "2", "--miners", "2", "--inner-steps", "2"]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_disjoint_picks_halve_the_step_and_shared_picks_keep_it() -> None:
    gain = _load("outer_gain")
    d = torch.tensor([1.0, -2.0, 3.0, -4.0])
    first, second = d * torch.tensor([1.0, 1, 0, 0]), d * torch.tensor([0.0, 0, 1, 1])
    disjoint = gain.step_stats([[d], [d]], [[first], [second]], [(first + second) / 2])
    assert disjoint == pytest.approx({"gain": 0.5, "norm_ratio": 0.5, "cosine": 1.0,
                                      "miners_per_position": 1.0})
    shared = gain.step_stats([[d], [d]], [[d], [d]], [d])
    assert shared == pytest.approx({"gain": 1.0, "norm_ratio": 1.0, "cosine": 1.0,
                                    "miners_per_position": 2.0})
    partly = gain.step_stats([[d], [d]], [[d], [first]], [(d + first) / 2])
    assert partly["miners_per_position"] == pytest.approx(6 / 4)  # two sent by both, two by one


def test_a_probed_run_is_the_study_run(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    study, out = tmp_path / "study.jsonl", tmp_path / "gain.jsonl"
    assert _load("optimizer_study").main(["--grid", "full", *TOY, "--out", str(study)]) == 0
    gain = _load("outer_gain")
    capsys.readouterr()
    svg = tmp_path / "gain.svg"
    assert gain.main([*TOY, "--out", str(out), "--study", str(study), "--svg", str(svg)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("| SparseLoCo base |"))
    assert row.endswith("| yes |")
    record = json.loads(out.read_text())
    assert len(record["exchanges"]) == 2
    assert all(0 < e["gain"] < 1 and 1 <= e["miners_per_position"] <= 2
               for e in record["exchanges"])
    assert svg.read_text().count('class="point"') == 2

    assert gain.main([*TOY, "--out", str(out), "--study", str(study)]) == 0  # nothing reruns
    assert len(out.read_text().splitlines()) == 1
    with pytest.raises(SystemExit, match="only plain SparseLoCo"):
        gain.main(["--only", "DiLoCo base", "--rounds", "1", "--out", str(out)])
