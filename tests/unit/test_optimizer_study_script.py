"""The optimizer study (benchmarks/optimizer_study.py) on a toy grid: two 1-round,
2-step, 2-miner runs land in the results file, a second call skips them, and
--report writes the table and the pictures."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "optimizer_study.py"
TOY = ["--grid", "smoke", "--rounds", "1", "--miners", "2", "--inner-steps", "2"]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("optimizer_study", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    study = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = study  # its dataclasses look their module up by name
    spec.loader.exec_module(study)
    return study


def test_runs_resume_and_report(tmp_path: Path) -> None:
    study = _load()
    out, docs = tmp_path / "results.jsonl", tmp_path / "docs"
    assert study.main([*TOY, "--out", str(out)]) == 0
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["name"] for r in first] == ["SparseLoCo base", "DiLoCo base"]
    assert all(r["rounds"] == 1 and r["params_identical"] for r in first)
    assert first[0]["compression_ratio"] > 100 > first[1]["compression_ratio"]

    assert study.main([*TOY, "--out", str(out)]) == 0  # both finished: nothing reruns
    assert out.read_text().splitlines() == [json.dumps(r) for r in first]

    assert study.main(["--report", "--out", str(out), "--docs", str(docs)]) == 0
    table = (docs / "table.md").read_text()
    assert "| SparseLoCo base |" in table
    assert "| DiLoCo base |" in table
    assert (docs / "table.csv").read_text().count("\n") == 3
    assert "<polyline" in (docs / "loss_vs_tokens_gap.svg").read_text()
    assert (docs / "loss_vs_wallclock_100.svg").exists()
    assert not (docs / "loss_vs_tokens_reset.svg").exists()  # none of its runs finished

    references = tmp_path / "references"  # DiLoCo alone: no loss-vs-tokens picture is drawn
    references.mkdir()
    _report().write_pictures(first[1:], references, "tiny")
    assert not list(references.glob("loss_vs_tokens_*.svg"))
    assert (references / "loss_vs_wallclock_100.svg").exists()


def test_a_run_key_ignores_the_label_but_not_the_settings() -> None:
    study = _load()
    base = study.grid_runs("full", "tiny", 10_000)[0]
    assert study.Run("another label", "g", base.settings, "tiny", 10_000).key == base.key
    other = study.Run(base.name, base.group, {**base.settings, "k": 16}, "tiny", 10_000)
    assert other.key != base.key


def test_every_run_of_the_full_grid_has_its_own_name_and_key_and_every_pair_is_in_it() -> None:
    study = _load()
    grid = importlib.import_module("benchmarks.optimizer_grid")
    for model in ("tiny", "small"):
        runs = study.grid_runs("full", model, 10_000)
        assert len({r.name for r in runs}) == len(runs)
        assert len({r.key for r in runs}) == len(runs)
    names = {name for name, _, _ in grid.FULL}
    assert {name for pair in grid.PAIRS for name in pair} <= names


def test_sparsity_ablations_get_their_own_outer_and_leave_the_rest_alone() -> None:
    study = _load()
    runs = {r.name: r for r in study.grid_runs("full", "tiny", 10_000)}
    base = study.sim_config(runs["SparseLoCo base"], 1)
    assert base.outer is None
    for name in ("SparseLoCo unquantised", "SparseLoCo random-k"):
        cfg = study.sim_config(runs[name], 1)
        assert cfg.outer is not None
        assert cfg.spec == base.spec  # the run spec (and so the codec) is the base's
        assert runs[name].key != runs["SparseLoCo base"].key
    assert "sparsity" not in runs["SparseLoCo base"].settings  # earlier results keep their keys


def test_only_runs_the_named_runs(tmp_path: Path) -> None:
    study = _load()
    out = tmp_path / "results.jsonl"
    assert study.main([*TOY, "--only", "DiLoCo base", "--out", str(out)]) == 0
    assert [json.loads(line)["name"] for line in out.read_text().splitlines()] == ["DiLoCo base"]


def test_a_run_on_another_device_is_another_run_and_reaches_the_engines() -> None:
    study = _load()
    cpu = study.grid_runs("full", "tiny", 10_000)[0]
    cuda = study.grid_runs("full", "tiny", 10_000, device="cuda")[0]
    assert cuda.key != cpu.key
    assert '"device"' not in cpu.key  # the CPU runs already in the results keep their keys
    assert study.sim_config(cuda, 1).engine.device == "cuda"
    assert study.sim_config(cpu, 1).engine.device == "cpu"


def _report() -> ModuleType:
    _load()  # puts the repository on the path, as the script does
    return importlib.import_module("benchmarks.optimizer_report")


def test_runs_repeated_over_seeds_are_grouped_with_seed_zero() -> None:
    study = _report()

    def rec(name: str, group: str, loss: float) -> dict[str, object]:
        return {"name": name, "group": group, "heldout_loss": [5.0, loss]}

    results = [rec("A", "base", 2.0), rec("A seed 1", "seeds", 2.2), rec("B seed 1", "seeds", 3.0),
               rec("A seed 2", "seeds", 1.9)]
    assert study.seed_groups(results) == {"A": {0: 2.0, 1: 2.2, 2: 1.9}, "B": {1: 3.0}}
    table = study.seed_table(results)
    assert "| A | 3 | 2.0333 | 1.9000 – 2.2000 | 2.0000 / 2.2000 / 1.9000 | – | – |" in table
    results += [rec("DDP base", "base", 1.0), rec("DDP base seed 1", "seeds", 2.0),
                rec("DDP base seed 2", "seeds", 1.9)]
    paired = study.seed_table(results)  # each seed against DDP at the same seed
    assert "| 2.0000 / 2.2000 / 1.9000 | +100.0% / +10.0% / +0.0% | – |" in paired
    results.append(rec("DiLoCo base seed 2", "seeds", 1.0))  # seed 2 only: pairs on seed 2
    assert "| 2.0000 / 2.2000 / 1.9000 | +100.0% / +10.0% / +0.0% | – / – / +90.0% |" in (
        study.seed_table(results))


def test_a_pair_is_compared_seed_by_seed_with_a_confidence_interval() -> None:
    """Mean of the per-seed differences over the seeds both ran, its t interval (by hand:
    diffs +10%, −10%, +30% → mean 10%, sd 20%, half-width 4.303 · 20% / √3)."""
    study = _report()
    n, mean, half, below = study.paired_difference({0: 1.1, 1: 0.9, 2: 1.3, 5: 9.0},
                                                   {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0})
    assert (n, below) == (3, 1)
    assert mean == pytest.approx(0.1)
    assert half == pytest.approx(4.303 * 0.2 / 3 ** 0.5)
    assert math.isnan(study.paired_difference({0: 1.0}, {0: 2.0})[2])


def test_final_loss_against_compression_is_drawn_once_two_densities_have_seeds() -> None:
    report = _report()
    grid = importlib.import_module("benchmarks.optimizer_grid")
    (_, k64), (_, k128) = grid.DENSITY[:2]

    def rec(name: str, group: str, loss: float, ratio: float) -> dict[str, object]:
        return {"name": name, "group": group, "heldout_loss": [5.0, loss],
                "compression_ratio": ratio}

    results = [rec(k64, "tune-public", 2.2, 206.0), rec(k64 + " seed 1", "seeds", 2.3, 206.0),
               rec("DDP base", "base", 2.0, 1.0), rec("DDP base seed 1", "seeds", 2.0, 1.0)]
    assert report.density_chart(results, "tiny") is None  # one density only
    results += [rec(k128, "tune-public", 2.1, 117.0), rec(k128 + " seed 1", "seeds", 2.2, 117.0)]
    chart = report.density_chart(results, "tiny")
    assert chart is not None
    assert "<polyline" in chart
    assert "DDP (dense)" in chart
    assert "plain averaging" not in chart  # no seeds of it in these results


def test_final_loss_by_seed_is_drawn_once_per_miner_count() -> None:
    """Settings at M = 8 get their own picture: one palette of lines per picture."""
    report = _report()
    grid = importlib.import_module("benchmarks.optimizer_grid")
    (m8, _), (m8_dense, _) = grid.M8_REFERENCES[:2]

    def rec(name: str, group: str, loss: float, miners: int) -> dict[str, object]:
        return {"name": name, "group": group, "heldout_loss": [5.0, loss],
                "settings": {"miners": miners}}

    results = [rec(grid.RECOMMENDED, "tune-public", 2.2, 4),
               rec(grid.RECOMMENDED + " seed 1", "seeds", 2.3, 4),
               rec("DDP base", "base", 2.0, 4), rec("DDP base seed 1", "seeds", 2.1, 4)]
    assert list(report.seed_charts(results, "tiny")) == ["final_loss_by_seed.svg"]
    results += [rec(m8, "M8", 2.5, 8), rec(m8 + " seed 1", "seeds", 2.4, 8),
                rec(m8_dense + " seed 1", "seeds", 2.45, 8)]  # seed 0 not run yet
    charts = report.seed_charts(results, "tiny")
    assert sorted(charts) == ["final_loss_by_seed.svg", "final_loss_by_seed_M8.svg"]
    assert "M=8" not in charts["final_loss_by_seed.svg"]
    assert m8 in charts["final_loss_by_seed_M8.svg"]
    assert "DDP base" not in charts["final_loss_by_seed_M8.svg"]


def test_final_loss_by_seed_draws_another_h_apart_with_ddp_in_both() -> None:
    """Settings at H = 3 get their own picture; DDP, which has no H, is the reference in
    every picture of its miner count."""
    report = _report()
    grid = importlib.import_module("benchmarks.optimizer_grid")
    h3 = grid.H3_REFERENCES[0][0]

    def rec(name: str, loss: float, **settings: object) -> dict[str, object]:
        return {"name": name, "group": "seeds" if " seed " in name else "x",
                "heldout_loss": [5.0, loss], "settings": {"miners": 4, **settings}}

    results = [rec(grid.RECOMMENDED, 2.2, inner_steps=5),
               rec(grid.RECOMMENDED + " seed 1", 2.3, inner_steps=5),
               rec("DDP base", 2.0, optimizer="ddp", inner_steps=30),
               rec("DDP base seed 1", 2.1, optimizer="ddp", inner_steps=30),
               rec(h3, 2.25, inner_steps=3), rec(h3 + " seed 1", 2.35, inner_steps=3)]
    charts = report.seed_charts(results, "tiny")
    assert sorted(charts) == ["final_loss_by_seed.svg", "final_loss_by_seed_H3.svg"]
    assert h3 not in charts["final_loss_by_seed.svg"]
    assert h3 in charts["final_loss_by_seed_H3.svg"]
    assert grid.RECOMMENDED not in charts["final_loss_by_seed_H3.svg"]
    assert "H = 3" in charts["final_loss_by_seed_H3.svg"]
    assert all("DDP base" in chart for chart in charts.values())


def test_a_loss_picture_is_drawn_only_once_the_run_it_is_about_has_results(
        tmp_path: Path) -> None:
    """The H = 3 picture on small's inner lr names its H = 5 neighbour too; that neighbour
    alone (as on tiny, where H = 3 at that lr was never run) draws nothing."""
    report = _report()
    grid = importlib.import_module("benchmarks.optimizer_grid")

    def rec(name: str, loss: float) -> dict[str, object]:
        return {"name": name, "group": "x", "heldout_loss": [5.0, 3.0, loss], "tokens": 100,
                "rounds": 2, "round_seconds": [1.0, 1.0], "round_bytes_per_miner": [8, 8],
                "settings": {"miners": 4}}

    results = [rec(grid.SMALL_SETTING, 2.2), rec("DDP inner lr 5e-4", 2.0)]
    report.write_pictures(results, tmp_path, "tiny")
    assert not (tmp_path / "loss_vs_tokens_h3_lr1e-3.svg").exists()
    report.write_pictures([*results, rec(grid.SMALL_H3[0], 2.1)], tmp_path, "small")
    picture = (tmp_path / "loss_vs_tokens_h3_lr1e-3.svg").read_text()
    assert grid.SMALL_H3[0] in picture
    assert grid.SMALL_SETTING in picture
