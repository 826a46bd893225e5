"""`gradmesh data prepare|verify` and `gradmesh tokenizer train`.

Summaries go to stderr (rich tables); the one value a script wants goes to
stdout: the manifest's sha256 (prepare, verify) or the tokenizer file's sha256
(train). Errors are node.errors subclasses, which `gradmesh` answers with
`gradmesh: error: ...` and exit 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.cli.common import add_flag

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def add_data_commands(sub: SubParsers) -> None:
    """Register `data prepare`, `data verify` and `tokenizer train` on `sub`."""
    _add_data(sub)
    _add_tokenizer(sub)


# --- parsers --------------------------------------------------------------------------------------
def _add_data(sub: SubParsers) -> None:
    p = sub.add_parser("data", help="training data tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)

    prep = data_sub.add_parser(
        "prepare", help="turn text, .jsonl and .parquet files into token shards",
        description="Tokenize documents into train/held-out token shards with a manifest "
                    "(sha256 of every shard, the tokenizer and the manifest itself). Text "
                    "files are one document each; .jsonl one per line and .parquet one per "
                    "row, from --text-field. Prints the manifest's sha256 on stdout.")
    prep.add_argument("inputs", nargs="+", type=Path, help="files or folders")
    prep.add_argument("--out", type=Path, required=True, help="output folder")
    add_flag(prep, "--tokenizer", env="TOKENIZER", type=Path,
             help="tokenizer.json (default: the byte tokenizer)")
    prep.add_argument("--eot-token", default=None,
                      help="end-of-text token of --tokenizer (default: <|endoftext|>, "
                           "<|end_of_text|>, </s> or <eos>, the first it has)")
    prep.add_argument("--text-field", default="text",
                      help=".jsonl key / .parquet column holding the text (default: text)")
    add_flag(prep, "--workers", env="DATA_WORKERS", type=int, default=0,
             help="tokenizer processes (0: CPUs - 1 with a BPE tokenizer, at least 1; "
                  "1 for the byte tokenizer)")
    prep.add_argument("--shard-mib", type=float, default=64.0, help="tokens per shard, in Mi")
    prep.add_argument("--heldout-fraction", type=float, default=0.05)
    prep.add_argument("--suffix", action="append", default=None,
                      help="file suffixes to read from folders (repeatable)")
    prep.add_argument("--skip-bad-records", action="store_true",
                      help="skip (and count) malformed .jsonl lines instead of failing")
    prep.set_defaults(func=_run_data_prepare)

    verify = data_sub.add_parser(
        "verify", help="re-hash a shard folder against its manifest",
        description="Check the manifest's own hash and totals and every shard's size, sha256 "
                    "and token ids. Prints the manifest's sha256 on stdout.")
    verify.add_argument("dir", type=Path, help="prepared shards folder")
    verify.set_defaults(func=_run_data_verify)


def _add_tokenizer(sub: SubParsers) -> None:
    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tok_sub = p.add_subparsers(dest="tokenizer_command", required=True)
    train = tok_sub.add_parser(
        "train", help="train a byte-level BPE tokenizer",
        description="Train a byte-level BPE on files or folders (text, .jsonl, .parquet) and "
                    "write tokenizer.json; the same inputs give a byte-identical file. Prints "
                    "the file's sha256 on stdout.")
    train.add_argument("files", nargs="+", type=Path, help="files or folders")
    train.add_argument("--vocab-size", type=int, required=True,
                       help="ids in the vocabulary, end-of-text included (>= 257)")
    train.add_argument("--out", type=Path, required=True, help="tokenizer.json to write")
    train.add_argument("--text-field", default="text",
                       help=".jsonl key / .parquet column holding the text (default: text)")
    train.add_argument("--suffix", action="append", default=None,
                       help="file suffixes to read from folders (repeatable)")
    train.add_argument("--min-frequency", type=int, default=2,
                       help="merge only pairs seen at least this often")
    train.add_argument("--eot-token", default="<|endoftext|>", help="end-of-text special token")
    train.add_argument("--skip-bad-records", action="store_true",
                       help="skip malformed .jsonl lines instead of failing")
    train.set_defaults(func=_run_tokenizer_train)


# --- runners --------------------------------------------------------------------------------------
def _run_data_prepare(args: argparse.Namespace) -> int:
    from node.cli.report import console
    from node.engine.documents import DEFAULT_SUFFIXES
    from node.engine.prepare import PrepareProgress, prepare_shards
    from node.engine.tokenizer import ByteTokenizer, default_workers, load_tokenizer
    from node.errors import ConfigError

    tokenizer = load_tokenizer(args.tokenizer, eot_token=args.eot_token)
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    workers = args.workers or (1 if isinstance(tokenizer, ByteTokenizer) else default_workers())
    shard_tokens = int(args.shard_mib * 2**20)
    if shard_tokens <= 0:
        raise ConfigError(f"--shard-mib must be positive, got {args.shard_mib}")
    with _byte_progress("tokenizing", enabled=console.is_terminal) as update:
        def on_progress(p: PrepareProgress) -> None:
            update(p.bytes_done, p.bytes_total, f"{p.documents:,} docs · {p.tokens:,} tokens")

        manifest = prepare_shards(
            args.inputs, args.out, tokenizer=tokenizer, text_field=args.text_field,
            workers=workers, shard_tokens=shard_tokens, heldout_fraction=args.heldout_fraction,
            suffixes=args.suffix or DEFAULT_SUFFIXES, skip_bad_records=args.skip_bad_records,
            progress=on_progress,
        )  # fmt: skip
    print_manifest(manifest, f"prepared {args.out}")
    print(manifest.manifest_sha256)
    return 0


def _run_data_verify(args: argparse.Namespace) -> int:
    from node.engine.shards import verify_shards

    manifest = verify_shards(args.dir)
    print_manifest(manifest, f"verified {args.dir}: every hash matches")
    print(manifest.manifest_sha256)
    return 0


def _run_tokenizer_train(args: argparse.Namespace) -> int:
    from functools import partial

    from rich.table import Table

    from node.cli.report import console
    from node.engine.documents import (
        DEFAULT_SUFFIXES,
        collect_files,
        normalize_suffixes,
        read_documents,
    )
    from node.engine.tokenizer import train_bpe

    suffixes = normalize_suffixes(args.suffix or DEFAULT_SUFFIXES)
    files = [path for _, path in collect_files(args.files, suffixes)]
    read = partial(read_documents, text_field=args.text_field,
                   skip_bad_records=args.skip_bad_records)
    with console.status("training the tokenizer", spinner="dots") if console.is_terminal \
            else _nothing():
        tokenizer = train_bpe(files, args.vocab_size, args.out, eot_token=args.eot_token,
                              min_frequency=args.min_frequency, read=read)
    table = Table(show_header=False, title=f"tokenizer {args.out}")
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("input files", f"{len(files):,}")
    table.add_row("vocabulary", f"{tokenizer.vocab_size:,}")
    table.add_row("end of text", f"{tokenizer.eot_token} = {tokenizer.eot_id}")
    console.print(table)
    console.print(f"tokenizer sha256 [bold]{tokenizer.sha256}[/bold]", soft_wrap=True)
    print(tokenizer.sha256)
    return 0


# --- presentation ---------------------------------------------------------------------------------
def print_manifest(manifest: Any, title: str) -> None:
    """Documents, tokens and shards per split, then the tokenizer and the manifest hash."""
    from rich.table import Table

    from node.cli.report import console
    from node.engine.manifest import SPLITS

    table = Table(title=title)
    table.add_column("split")
    for name in ("documents", "tokens", "shards"):
        table.add_column(name, justify="right")
    for name in SPLITS:
        stats = manifest.split(name)
        table.add_row(name, f"{stats.documents:,}", f"{stats.tokens:,}", f"{stats.shards:,}")
    table.add_row("total", f"{manifest.documents:,}", f"{manifest.tokens:,}",
                  f"{len(manifest.shards):,}", style="bold")
    console.print(table)
    console.print(f"{manifest.sources:,} input files · skipped {manifest.skipped_empty:,} "
                  f"empty and {manifest.skipped_bad_records:,} bad records · {manifest.dtype} "
                  f"ids · vocabulary {manifest.vocab_size:,}")
    # hashes on one line each, never wrapped: they are meant to be copied
    console.print(f"tokenizer sha256 {manifest.tokenizer.sha256}", soft_wrap=True)
    console.print(f"manifest sha256  [bold]{manifest.manifest_sha256}[/bold]", soft_wrap=True)


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


@contextmanager
def _byte_progress(description: str, enabled: bool) -> Iterator[Any]:
    """A rich bar over input bytes; `update(done, total, status)`."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    from node.cli.report import console

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
        console=console, disable=not enabled, transient=False,
    )  # fmt: skip
    with progress:
        task = progress.add_task(description, total=None, status="")

        def update(done: int, total: int, status: str = "") -> None:
            progress.update(task, completed=done, total=total, status=status)

        yield update
