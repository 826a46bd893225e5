"""Running lm-eval tasks on an exported model, and the whole `gradmesh eval` report.

This module owns the work behind `gradmesh eval` on a Hugging Face folder that
node.engine.hf wrote, past the model checks and the held-out perplexity (those
are node/engine/perplexity.py's): looking up the named tasks, YAML task files
from a local folder included, running EleutherAI's lm-evaluation-harness (the
optional, pinned `eval` extra) on them, reading its results into rows, and
`evaluate_model`, which puts the perplexity and the task scores into one report.
It returns plain results; printing them is the command's business.

It must never reach the network: the hub, `datasets` and `transformers` are put
in offline mode (`force_offline`) before lm-eval is imported here, and a local
task's relative `data_files` are resolved against its YAML's folder. lm-eval is
imported inside functions only, so this module imports without the extra;
without it the functions raise `EvalError` naming the install command.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from node.engine.hf import TOKENIZER_FILE
from node.engine.perplexity import (
    INSTALL_HINT,
    EvalError,
    Perplexity,
    card_heldout_loss,
    check_model_dir,
    force_offline,
    heldout_perplexity,
)

__all__ = ["EvalReport", "HeldoutRun", "TaskRun", "TaskScore", "evaluate_model", "run_tasks",
           "task_scores", "task_specs"]

_NOT_METRICS = {"alias", "name", "sample_len", "samples"}


@dataclass(frozen=True)
class TaskScore:
    task: str
    metric: str
    value: float
    stderr: float | None
    samples: int | None


@dataclass(frozen=True)
class EvalReport:
    model: str
    heldout: Perplexity | None
    heldout_note: str
    scores: list[TaskScore] = field(default_factory=list)
    lm_eval_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TaskRun:
    """How lm-eval runs: examples per task (None: all), batch size, torch device."""

    limit: int | None = None
    batch_size: int = 1
    device: str = "cpu"


@dataclass(frozen=True)
class HeldoutRun:
    """Where held-out tokens come from (None: nowhere), how many, in what batches."""

    data_dir: Path | None = None
    max_tokens: int = 65536
    batch_size: int = 8


# --- the extra ---------------------------------------------------------------------------


def _import_lm_eval() -> Any:
    force_offline()
    try:
        import lm_eval
        import lm_eval.tasks
    except ImportError as exc:
        raise EvalError(f"lm-eval is not installed ({exc}); it is the optional eval "
                        f"extra: {INSTALL_HINT}") from exc
    return lm_eval


# --- lm-eval tasks -----------------------------------------------------------------------


def _absolute_data_files(files: object, base: Path) -> object:
    """`data_files` (a path, a list, or a split -> path(s) mapping) with relative paths
    made absolute against `base`: `datasets` would resolve them against the cwd."""
    if isinstance(files, str):
        return files if "://" in files else str(base / files)
    if isinstance(files, list):
        return [_absolute_data_files(f, base) for f in files]
    if isinstance(files, Mapping):
        return {split: _absolute_data_files(f, base) for split, f in files.items()}
    return files


def _local_spec(entry: Any) -> str | dict[str, Any]:
    """A local YAML task as a config dict with its data files located; other kinds by name."""
    from lm_eval.tasks._yaml_loader import load_yaml

    if entry.yaml_path is None or entry.kind.name != "TASK":
        return str(entry.name)
    config: dict[str, Any] = load_yaml(entry.yaml_path, resolve_func=True)
    kwargs = config.get("dataset_kwargs") or {}
    if "data_files" in kwargs:
        kwargs["data_files"] = _absolute_data_files(kwargs["data_files"],
                                                    Path(entry.yaml_path).parent)
    return config


def _task_manager(task_dir: Path | None, with_builtin: bool) -> Any:
    from lm_eval.tasks import TaskManager

    if task_dir is not None and not any(Path(task_dir).rglob("*.yaml")):
        raise EvalError(f"--task-dir {task_dir}: no such folder, or no .yaml task files in it")
    return TaskManager(include_path=str(task_dir) if task_dir else None,
                       include_defaults=with_builtin)


def _local_names(manager: Any, task_dir: Path | None) -> list[str]:
    if task_dir is None:
        return []
    root = Path(task_dir).resolve()
    return sorted(name for name, entry in manager.task_index.items()
                  if entry.yaml_path is not None
                  and root in Path(entry.yaml_path).resolve().parents)


def _check_known(wanted: Sequence[str], manager: Any, task_dir: Path | None) -> None:
    unknown = [name for name in wanted if name not in manager.task_index]
    if not unknown:
        return
    where = (f"not in --task-dir {task_dir} (its tasks: "
             f"{', '.join(_local_names(manager, task_dir)) or 'none'}) nor"
             if task_dir is not None else "not")
    raise EvalError(f"unknown task {', '.join(unknown)}: {where} among lm-eval's own tasks")


def task_specs(names: Sequence[str], task_dir: Path | None
               ) -> tuple[list[str | dict[str, Any]], Any]:
    """(task specs for `simple_evaluate`, the TaskManager that knows them).

    No names: every task in `task_dir`. lm-eval's own tasks are indexed only when a
    name is not in `task_dir` (indexing them takes seconds); offline they work only
    if their datasets are already in the local cache.
    """
    _import_lm_eval()
    if task_dir is None and not names:
        raise EvalError("no tasks: name them with --tasks, or give a folder of YAML tasks "
                        "with --task-dir")
    manager = _task_manager(task_dir, with_builtin=task_dir is None)
    wanted = list(names) or _local_names(manager, task_dir)
    if task_dir is not None and any(name not in manager.task_index for name in wanted):
        manager = _task_manager(task_dir, with_builtin=True)
    _check_known(wanted, manager, task_dir)
    return [_local_spec(manager.task_index[name]) for name in wanted], manager


def _prefix_token_id(model_dir: Path, config: Mapping[str, Any]) -> int | None:
    """The token lm-eval puts before a context: None (its default, BOS or EOS) when the
    tokenizer has one; else the newline's id, which ends every byte-tokenized document."""
    if config.get("bos_token_id") is not None or config.get("eos_token_id") is not None:
        return None
    from tokenizers import Tokenizer

    try:
        ids: list[int] = Tokenizer.from_file(str(Path(model_dir) / TOKENIZER_FILE)).encode(
            "\n").ids
    except Exception as exc:  # tokenizers raises bare Exceptions on malformed files
        raise EvalError(f"{model_dir}/{TOKENIZER_FILE}: cannot be loaded: {exc}") from exc
    if not ids:
        raise EvalError(f"{model_dir}: the tokenizer has no BOS, EOS or newline token")
    return ids[-1]


def run_tasks(model_dir: Path, specs: Sequence[str | dict[str, Any]], manager: Any,
              run: TaskRun | None = None) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` with its `hf` model on the folder (fp32) and the tasks
    `task_specs` found: its results."""
    run = run or TaskRun()
    config = check_model_dir(model_dir)
    model_args: dict[str, Any] = {"pretrained": str(Path(model_dir).resolve()),
                                  "dtype": "float32"}
    prefix = _prefix_token_id(model_dir, config)
    if prefix is not None:
        model_args["prefix_token_id"] = prefix
    lm_eval = _import_lm_eval()
    try:
        results = lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=list(specs), task_manager=manager,
            limit=run.limit, batch_size=run.batch_size, device=run.device,
            log_samples=False)
    except (OSError, ValueError, KeyError) as exc:  # data missing offline, a malformed task
        raise EvalError(f"lm-eval failed: {exc.__class__.__name__}: {exc}") from exc
    if not isinstance(results, dict):
        raise EvalError("lm-eval returned no results")
    return results


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def task_scores(results: Mapping[str, Any]) -> list[TaskScore]:
    """One row per (task, metric) of `simple_evaluate`'s results; a metric computed with
    a filter other than lm-eval's "none" is named `metric,filter`."""
    scores = []
    for task, metrics in sorted(results.get("results", {}).items()):
        samples = (results.get("n-samples") or {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if metric in _NOT_METRICS or metric.endswith("_stderr"):
                continue
            if (number := _float_or_none(value)) is None:
                continue
            stderr = _float_or_none(metrics.get(f"{metric}_stderr,{filter_name}"))
            name = metric if filter_name in ("", "none") else key
            scores.append(TaskScore(task, name, number, stderr, samples))
    return scores


# --- the whole evaluation ----------------------------------------------------------------


def _heldout(model_dir: Path, heldout: HeldoutRun, device: str
             ) -> tuple[Perplexity | None, str]:
    if heldout.data_dir is not None:
        found = heldout_perplexity(model_dir, heldout.data_dir, max_tokens=heldout.max_tokens,
                                   batch_size=heldout.batch_size, device=device)
        return found, ""
    note = ("held-out perplexity not computed: the folder holds no held-out tokens; "
            "pass --heldout DIR (a `gradmesh data prepare` folder)")
    recorded = card_heldout_loss(model_dir)
    if recorded is not None and recorded < 700:  # exp overflows a float beyond ~709
        note += (f"; its model card records heldout_loss {recorded:g} "
                 f"(perplexity {math.exp(recorded):.4g})")
    return None, note


def evaluate_model(model_dir: Path, *, tasks: Sequence[str] = (), task_dir: Path | None = None,
                   heldout: HeldoutRun | None = None, run: TaskRun | None = None
                   ) -> EvalReport:
    """Held-out perplexity (or why there is none), then the tasks, if any are asked for
    (they are looked up first, so that a wrong name fails before any model runs)."""
    heldout, run = heldout or HeldoutRun(), run or TaskRun()
    check_model_dir(model_dir)
    wanted = task_specs(tasks, task_dir) if tasks or task_dir is not None else None
    perplexity, note = _heldout(model_dir, heldout, run.device)
    if wanted is None:
        return EvalReport(str(model_dir), perplexity, note)
    results = run_tasks(model_dir, *wanted, run)
    return EvalReport(str(model_dir), perplexity, note, task_scores(results),
                      str(results.get("lm_eval_version") or "") or None)
