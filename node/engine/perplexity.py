"""Checking an exported model folder, and its held-out perplexity with `transformers`.

This module owns what `gradmesh eval` needs before any lm-eval task runs: checking
that a folder node.engine.hf wrote is a Hugging Face model (`check_model_dir`),
reading the `heldout_loss` its model card records, and the mean next-token loss
and perplexity of the folder's model on the held-out split of a prepared data
folder, window by window, computed with `transformers` (`heldout_perplexity`).
It also owns what node/engine/lmeval.py shares with it: the `EvalError` both
raise, the install hint, and the offline switches (`OFFLINE_ENV`, `force_offline`).
It returns plain results; printing them is the command's business.

It must never reach the network: the hub, `datasets` and `transformers` are put
in offline mode before `transformers` is imported, and the model is loaded from
local files only. It must never import lm-eval (the perplexity works without the
eval extra's harness), and imports `transformers` inside functions only, so this
module imports without it; without it the functions raise `EvalError` naming
the install command.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from node.engine.hf import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    ExportError,
    byte_tokenizer_json,
    read_config,
)
from node.engine.shards import load_shards
from node.engine.tokenizer import BYTE_TOKENIZER_SHA256
from node.errors import DataError, NodeError

__all__ = ["INSTALL_HINT", "OFFLINE_ENV", "EvalError", "Perplexity", "card_heldout_loss",
           "check_model_dir", "force_offline", "heldout_perplexity", "heldout_windows"]

INSTALL_HINT = "pip install -e '.[eval]'"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_EVALUATE_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
# module-level switches the libraries read their environment into, once, at import
_OFFLINE_FLAGS = {"huggingface_hub.constants": ("HF_HUB_OFFLINE",),
                  "datasets.config": ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}


class EvalError(NodeError):
    """A model folder, held-out data or task cannot be evaluated (or lm-eval is missing)."""


@dataclass(frozen=True)
class Perplexity:
    """Mean next-token loss (nats) over `tokens` predicted tokens, and its exponential."""

    tokens: int
    mean_loss: float
    perplexity: float
    source: str


# --- offline -----------------------------------------------------------------------------


def force_offline() -> None:
    """Put the hub, datasets and transformers offline, even if one was imported already."""
    os.environ.update(OFFLINE_ENV)
    for module_name, flags in _OFFLINE_FLAGS.items():
        module = sys.modules.get(module_name)
        for flag in flags:
            if module is not None and hasattr(module, flag):
                setattr(module, flag, True)


def _import_transformers() -> Any:
    force_offline()
    try:
        import transformers
    except ImportError as exc:
        raise EvalError(f"transformers is not installed ({exc}): {INSTALL_HINT}") from exc
    return transformers


# --- the model folder --------------------------------------------------------------------


def check_model_dir(model_dir: Path) -> dict[str, Any]:
    """config.json of a Hugging Face model folder; `EvalError` if it is not one."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise EvalError(f"{model_dir}: no such model folder")
    weights = [WEIGHTS_FILE, f"{WEIGHTS_FILE}.index.json"]
    if not (folder / CONFIG_FILE).is_file() or not any((folder / w).is_file() for w in weights):
        raise EvalError(f"{model_dir}: not a Hugging Face model folder (no {CONFIG_FILE} "
                        f"and {WEIGHTS_FILE}; `gradmesh export` writes one)")
    try:
        config = read_config(folder)
    except ExportError as exc:
        raise EvalError(str(exc)) from exc
    return config


def _tokenizer_sha256(model_dir: Path) -> str:
    """The identity shard manifests record for the folder's tokenizer.json."""
    try:
        raw = (Path(model_dir) / TOKENIZER_FILE).read_bytes()
    except OSError as exc:
        raise EvalError(f"{model_dir}: no {TOKENIZER_FILE}: {exc.strerror}") from exc
    if raw == byte_tokenizer_json().encode("utf-8"):
        return BYTE_TOKENIZER_SHA256  # the export's rendering of our file-less byte tokenizer
    return hashlib.sha256(raw).hexdigest()


def card_heldout_loss(model_dir: Path) -> float | None:
    """The `heldout_loss` fact on the folder's model card (README.md), if it has one."""
    try:
        lines = (Path(model_dir) / "README.md").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] == "heldout_loss":
            try:
                return float(cells[1])
            except ValueError:
                return None
    return None


# --- held-out perplexity -----------------------------------------------------------------


def heldout_windows(tokens: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """Consecutive windows of `seq_len` tokens; a shorter last one if it has 2 or more.

    Each window is scored on its own: token i is predicted from the tokens before it
    in its window, so a window of n tokens predicts n - 1.
    """
    full = len(tokens) // seq_len
    windows = list(np.asarray(tokens[: full * seq_len]).reshape(full, seq_len))
    rest = np.asarray(tokens[full * seq_len:])
    return windows + ([rest] if len(rest) >= 2 else [])


def _heldout_tokens(data_dir: Path, model_dir: Path, vocab_size: int,
                    max_tokens: int) -> np.ndarray:
    try:
        corpus = load_shards(Path(data_dir), verify=False)  # the manifest's hash is checked
    except DataError as exc:
        raise EvalError(f"--heldout {data_dir}: {exc}") from exc
    want = _tokenizer_sha256(model_dir)
    if corpus.tokenizer_sha256 != want:
        raise EvalError(f"--heldout {data_dir} was tokenized by tokenizer "
                        f"{str(corpus.tokenizer_sha256)[:12]}, the model's is {want[:12]}")
    tokens = np.asarray(corpus.heldout[:max_tokens], dtype=np.int64)
    if len(tokens) < 2:
        raise EvalError(f"--heldout {data_dir}: its held-out split has {len(tokens)} tokens")
    if int(tokens.max()) >= vocab_size:
        raise EvalError(f"--heldout {data_dir}: token id {int(tokens.max())} is outside the "
                        f"model's {vocab_size} embeddings")
    return tokens


def _summed_loss(model: Any, windows: Sequence[np.ndarray], batch_size: int,
                 device: str) -> float:
    import torch
    import torch.nn.functional as F

    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = torch.from_numpy(np.stack(windows[start:start + batch_size])).to(device)
            logits = model(batch).logits.float()
            total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(),
                                           reduction="sum"))
    return total


def _load_model(model_dir: Path, device: str) -> Any:
    transformers = _import_transformers()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype="float32", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EvalError(f"{model_dir}: transformers cannot load the model: {exc}") from exc
    return model.to(device).eval()


def heldout_perplexity(model_dir: Path, data_dir: Path, *, max_tokens: int = 65536,
                       batch_size: int = 8, device: str = "cpu") -> Perplexity:
    """Mean loss and perplexity of the folder's model on the held-out split of `data_dir`
    (a `gradmesh data prepare` folder made with the model's tokenizer), at most
    `max_tokens` tokens, in windows of the model's context length (`heldout_windows`)."""
    config = check_model_dir(model_dir)
    tokens = _heldout_tokens(data_dir, model_dir, int(config["vocab_size"]), max_tokens)
    windows = heldout_windows(tokens, int(config["max_position_embeddings"]))
    model = _load_model(model_dir, device)
    full, last = windows, []
    if len(windows[-1]) != len(windows[0]):
        full, last = windows[:-1], windows[-1:]
    total = _summed_loss(model, full, batch_size, device) + _summed_loss(model, last, 1, device)
    count = sum(len(w) - 1 for w in windows)
    return Perplexity(tokens=count, mean_loss=total / count,
                      perplexity=math.exp(total / count), source=str(data_dir))
