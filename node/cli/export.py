"""`gradmesh export`: a local checkpoint as a Hugging Face `LlamaForCausalLM` folder.

The checkpoint is a file `CheckpointStore` wrote (node/engine/store.py), or a
node's data directory, whose newest checkpoints/ file is taken. docs/export.md
describes the folder written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from node.cli.common import add_contract_flag, add_flag
from node.errors import CheckpointError, ConfigError

__all__ = ["add_export_commands", "find_checkpoint", "parse_fact"]


def parse_fact(text: str) -> tuple[str, str]:
    """'KEY=VALUE' -> (KEY, VALUE); an argparse type for --card."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def add_export_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from node.engine.model import MODEL_CONFIGS

    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face model folder",
                       description="Turn a local checkpoint into a folder that "
                                   "transformers' AutoModelForCausalLM and AutoTokenizer load.")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="checkpoint file (ckpt-*.gmck) or a data directory with checkpoints/")
    p.add_argument("--out", type=Path, required=True, help="output folder (empty or new)")
    add_flag(p, "--model", env="MODEL", choices=sorted(MODEL_CONFIGS), default="tiny")
    add_flag(p, "--tokenizer", env="TOKENIZER", type=Path,
             help="tokenizers tokenizer.json (default: the byte tokenizer)")
    add_contract_flag(p, required=False)
    p.add_argument("--card", type=parse_fact, action="append", default=[], metavar="KEY=VALUE",
                   help="extra fact for the model card, e.g. heldout_loss=3.21 (repeatable)")
    p.add_argument("--force", action="store_true", help="replace files in a non-empty --out")
    p.set_defaults(func=_run_export)


def find_checkpoint(path: Path) -> Path:
    """`path` itself if it is a file, else the newest file under `path`/checkpoints."""
    from node.engine.store import CheckpointStore

    if path.is_file():
        return path
    if not path.is_dir():
        raise ConfigError(f"--checkpoint {path}: no such file or folder")
    found = CheckpointStore(path / "checkpoints").paths() or CheckpointStore(path).paths()
    if not found:
        raise CheckpointError(f"{path}: no checkpoint files in it or in its checkpoints/")
    return found[0]


def _card(checkpoint: Any, args: argparse.Namespace) -> dict[str, object]:
    facts: dict[str, object] = {"run": checkpoint.meta.get("run", "unknown"),
                                "window": checkpoint.window,
                                "checkpoint": checkpoint.path.name}
    facts.update({k: v for k, v in sorted(checkpoint.meta.items()) if k != "run"})
    if args.contract:
        facts["contract"] = args.contract
    facts.update(dict(args.card))
    return facts


def _check_digest(checkpoint: Any) -> None:
    from node.outer.step import params_digest

    recorded = checkpoint.meta.get("digest")
    if recorded is not None and params_digest(checkpoint.params).hex() != recorded:
        raise CheckpointError(f"{checkpoint.path}: parameters do not match the recorded digest")


def _run_export(args: argparse.Namespace) -> int:
    from node.engine.hf import export_model
    from node.engine.model import get_config
    from node.engine.store import CheckpointStore

    path = find_checkpoint(args.checkpoint)
    checkpoint = CheckpointStore(path.parent).load(path)
    _check_digest(checkpoint)
    cfg = get_config(args.model)
    out = export_model(checkpoint.params, cfg, args.out, tokenizer_file=args.tokenizer,
                       card=_card(checkpoint, args), overwrite=args.force)
    total = sum(t.numel() for t in checkpoint.params)
    print(out)
    print(f"exported {path.name} (run {checkpoint.meta.get('run', 'unknown')}, window "
          f"{checkpoint.window}): model {cfg.name}, {total:,} parameters, "
          f"{'tokenizer ' + args.tokenizer.name if args.tokenizer else 'byte tokenizer'}")
    return 0
