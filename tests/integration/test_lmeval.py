"""`gradmesh eval` on an exported model: held-out perplexity, and a local lm-eval task
(tests/support/lmeval_task: 20 multiple-choice questions) run end to end.

The command runs in a child process, from another working directory, with the
offline variables removed from its environment (the command sets them), an empty
Hugging Face cache of its own, and sockets that refuse every internet connection:
lm-eval, datasets and transformers must work from local files alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from node.cli.main import main
from node.engine.hf import export_model, import_model
from node.engine.lmeval import task_scores
from node.engine.model import build_model, get_config
from node.engine.perplexity import OFFLINE_ENV
from node.engine.prepare import prepare_shards
from node.engine.shards import load_shards

pytest.importorskip("transformers", reason="transformers (dev and eval extras) not installed")

ROOT = Path(__file__).resolve().parents[2]
TASK_DIR = ROOT / "tests" / "support" / "lmeval_task"
TASK = "gradmesh_mc20"
TINY = get_config("tiny")
HELDOUT_TOKENS = 1000  # 7 full windows of 128 tokens and a shorter last one
CARD_LOSS = 5.25

# the child: refuse internet sockets (and say so on stderr), then run `gradmesh`
CHILD = r"""
import socket, sys
_connect = socket.socket.connect
def _refuse(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        sys.stderr.write(f"test guard: refused a connection to {address!r}\n")
        raise OSError("network access refused by the test")
    return _connect(self, address)
socket.socket.connect = _refuse
if "--no-lm-eval" in sys.argv:  # as if the eval extra were not installed
    sys.argv.remove("--no-lm-eval")
    sys.modules["lm_eval"] = None
from node.cli.main import main
from tests.support.threads import one_thread  # noqa: F401
sys.exit(main(sys.argv[1:]))
"""



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = [p.detach().clone() for p in build_model(TINY, seed=0).parameters()]
    return export_model(params, TINY, tmp_path_factory.mktemp("eval") / "model",
                        card={"run": "eval-test", "heldout_loss": CARD_LOSS})


@pytest.fixture(scope="module")
def heldout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heldout")
    lines = [json.dumps({"text": f"note {i}: the miners trained window {i * 7 % 23} and the "
                                 f"validator scored {i % 5} of them; loss fell to {i / 9:.3f}."})
             for i in range(80)]
    (root / "notes.jsonl").write_text("\n".join(lines) + "\n")
    manifest = prepare_shards([root / "notes.jsonl"], root / "shards", heldout_fraction=0.5)
    assert manifest.heldout.tokens > HELDOUT_TOKENS
    return root / "shards"


def gradmesh_eval(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    env.update(HF_HOME=str(cwd / "hf-home"), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD, "eval", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert "test guard" not in done.stderr, done.stderr[-2000:]
    return done


def our_mean_loss(model_dir: Path, data_dir: Path) -> tuple[float, int]:
    """Mean next-token loss computed with our own Decoder, window by window."""
    model = build_model(TINY, seed=1).eval()
    tokens = torch.from_numpy(load_shards(data_dir).heldout[:HELDOUT_TOKENS].astype(np.int64))
    total, count = 0.0, 0
    with torch.no_grad():
        for p, t in zip(model.parameters(), import_model(model_dir, TINY), strict=True):
            p.copy_(t)
        for start in range(0, len(tokens), TINY.max_seq_len):
            window = tokens[start:start + TINY.max_seq_len]
            if len(window) >= 2:
                logits = model(window[None])[0]
                total += float(F.cross_entropy(logits[:-1], window[1:], reduction="sum"))
                count += len(window) - 1
    return total / count, count


def test_a_local_task_and_the_heldout_perplexity_end_to_end(
        model_dir: Path, heldout_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="lm-eval (the eval extra) not installed")
    done = gradmesh_eval(str(model_dir), "--task-dir", str(TASK_DIR), "--heldout",
                         str(heldout_dir), "--heldout-tokens", str(HELDOUT_TOKENS),
                         "--batch-size", "4", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    [score] = report["scores"]
    assert (score["task"], score["metric"], score["samples"]) == (TASK, "acc", 20)
    assert 0.0 <= score["value"] <= 1.0
    assert score["stderr"] is not None
    assert report["lm_eval_version"]
    mean_loss, count = our_mean_loss(model_dir, heldout_dir)
    assert report["heldout"]["tokens"] == count
    assert report["heldout"]["mean_loss"] == pytest.approx(mean_loss, abs=1e-4)
    assert report["heldout"]["perplexity"] == pytest.approx(math.exp(mean_loss), rel=1e-4)


def test_the_table_prints_the_heldout_perplexity(model_dir: Path, heldout_dir: Path,
                                                 tmp_path: Path) -> None:
    done = gradmesh_eval(str(model_dir), "--heldout", str(heldout_dir),
                         "--heldout-tokens", str(HELDOUT_TOKENS), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.match(r"held-out perplexity ([\d.]+) \(mean loss ([\d.]+) nats over ([\d,]+) "
                     r"tokens", done.stdout)
    assert found, done.stdout
    mean_loss, count = our_mean_loss(model_dir, heldout_dir)
    assert float(found[1]) == pytest.approx(math.exp(mean_loss), rel=1e-4)
    assert float(found[2]) == pytest.approx(mean_loss, abs=1e-5)
    assert int(found[3].replace(",", "")) == count


def test_without_heldout_data_it_says_so_and_shows_the_card(
        model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "held-out perplexity not computed" in out
    assert "--heldout DIR" in out
    assert f"heldout_loss {CARD_LOSS:g} (perplexity {math.exp(CARD_LOSS):.4g})" in out


@pytest.mark.parametrize(("argv", "says"), [
    (["<tmp>", "--task-dir", str(TASK_DIR)], "not a Hugging Face model folder"),
    (["<model>", "--task-dir", "<tmp>/no-tasks"], "no .yaml task files"),
    (["<model>", "--task-dir", str(TASK_DIR), "--tasks", "no_such_task"],
     f"unknown task no_such_task: not in --task-dir {TASK_DIR} (its tasks: {TASK})"),
    (["<model>", "--task-dir", str(TASK_DIR), "--no-lm-eval"], "pip install -e '.[eval]'"),
], ids=["not-a-model", "no-task-dir", "unknown-task", "no-extra"])
def test_bad_input_is_a_one_line_error(model_dir: Path, tmp_path: Path, argv: list[str],
                                       says: str) -> None:
    if "--no-lm-eval" not in argv:
        pytest.importorskip("lm_eval", reason="lm-eval (the eval extra) not installed")
    argv = [a.replace("<model>", str(model_dir)).replace("<tmp>", str(tmp_path)) for a in argv]
    done = gradmesh_eval(*argv, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("gradmesh: error: ")]
    assert says in line


def test_task_scores_reads_lm_evals_results() -> None:
    results = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1,
                                 "exact_match,strict": 1, "exact_match_stderr,strict": "N/A"}},
               "n-samples": {"t": {"original": 9, "effective": 4}}}
    rows = [(s.task, s.metric, s.value, s.stderr, s.samples) for s in task_scores(results)]
    assert rows == [("t", "acc", 0.5, 0.1, 4), ("t", "exact_match,strict", 1.0, None, 4)]
