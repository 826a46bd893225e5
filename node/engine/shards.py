"""Prepared token shards: loading and verifying a shard directory.

This module owns reading a shard directory from disk: its checked manifest
(`read_manifest`), memory-mapping its shards as a Corpus (`load_shards`), and
re-hashing every shard against the manifest (`verify_shards`,
`ShardVerificationError`). The manifest's format, dataclasses, hash and checks
live in `node.engine.manifest` (the names other modules import from here are
re-exported); `node.engine.prepare` writes such directories.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from node.engine.data import Corpus
from node.engine.manifest import (
    MANIFEST_NAME,
    SPLITS,
    ShardInfo,
    ShardManifest,
    SplitStats,
    TokenizerInfo,
    canonical_sha256,
    is_shard_file,
    manifest_problems,
    parse_manifest,
    shard_file,
    token_dtype,
)
from node.errors import DataError

__all__ = [  # the loader, then the manifest names re-exported for existing importers
    "MANIFEST_NAME", "SPLITS", "ShardInfo", "ShardManifest", "ShardVerificationError",
    "SplitStats", "TokenizerInfo", "canonical_sha256", "is_shard_file", "load_shards",
    "read_manifest", "shard_file", "token_dtype", "verify_shards",
]


class ShardVerificationError(DataError):
    """A shard directory fails its manifest; `problems` lists everything found wrong."""

    def __init__(self, out_dir: Path, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        shown = "; ".join(self.problems[:10])
        more = f"; … {len(self.problems) - 10} more" if len(self.problems) > 10 else ""
        super().__init__(f"shards in {out_dir} fail verification "
                         f"({len(self.problems)} problem{'s' * (len(self.problems) != 1)}): "
                         f"{shown}{more}")



# --- reading and verifying ------------------------------------------------------------------------
def _read_manifest_bytes(out_dir: Path) -> bytes:
    path = Path(out_dir) / MANIFEST_NAME
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_manifest(out_dir: Path) -> ShardManifest:
    """The checked manifest of a shard directory (fields, hash, totals; not the shards)."""
    return ShardManifest.from_json(_read_manifest_bytes(out_dir))


def _shard_problem(out_dir: Path, info: ShardInfo, manifest: ShardManifest,
                   verify: bool) -> str | None:
    """What is wrong with one shard file: its size, and with `verify` its sha256 and ids."""
    path = out_dir / info.file
    itemsize = np.dtype(manifest.dtype).itemsize
    try:
        size = path.stat().st_size
    except OSError:
        return f"shard {path} is missing"
    if size != info.tokens * itemsize:
        return f"shard {path}: {size} bytes, manifest says {info.tokens * itemsize}"
    if verify and _file_sha256(path) != info.sha256:
        return f"shard {path}: sha256 does not match the manifest"
    if verify:
        tokens = np.memmap(path, dtype=np.dtype(manifest.dtype), mode="r", shape=(info.tokens,))
        if int(tokens.max()) >= manifest.vocab_size:
            return f"shard {path}: token id >= vocab_size {manifest.vocab_size}"
    return None


def _open_shard(out_dir: Path, info: ShardInfo, manifest: ShardManifest,
                verify: bool) -> np.ndarray:
    problem = _shard_problem(out_dir, info, manifest, verify)
    if problem is not None:
        raise DataError(problem)
    return np.memmap(out_dir / info.file, dtype=np.dtype(manifest.dtype), mode="r",
                     shape=(info.tokens,))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def load_shards(out_dir: Path, *, verify: bool = True) -> Corpus:
    """Memory-map a prepared shard directory as a Corpus.

    The manifest's own hash and totals are always checked; with `verify` (the
    default) every shard is re-hashed and its ids checked against the
    vocabulary, without it only the shard sizes. The Corpus carries the
    tokenizer's and the manifest's sha256.
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    train, heldout = _open_splits(out_dir, manifest, verify)
    source = (f"token shards in {out_dir} ({manifest.documents} documents from "
              f"{manifest.sources} files, manifest {manifest.manifest_sha256[:12]})")
    return Corpus(train=train, heldout=heldout, source=source, vocab_size=manifest.vocab_size,
                  tokenizer_sha256=manifest.tokenizer.sha256,
                  manifest_sha256=manifest.manifest_sha256)


def _open_splits(out_dir: Path, manifest: ShardManifest,
                 verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train, heldout) token arrays in native byte order; there must be training shards."""
    arrays: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for info in manifest.shards:
        arrays[info.split].append(_open_shard(out_dir, info, manifest, verify))
    if not arrays["train"]:
        raise DataError(f"{out_dir / MANIFEST_NAME}: no training shards")
    dtype = np.dtype(manifest.dtype).newbyteorder("=")
    return _join(arrays["train"], dtype), _join(arrays["heldout"], dtype)


def verify_shards(out_dir: Path) -> ShardManifest:
    """Re-hash a shard directory: the manifest's hash and totals, every shard's size, sha256
    and ids. Returns the manifest, or raises ShardVerificationError listing every problem
    found (one, when the manifest cannot be read or parsed at all)."""
    out_dir = Path(out_dir)
    try:
        manifest, recorded = parse_manifest(_read_manifest_bytes(out_dir))
    except DataError as exc:
        raise ShardVerificationError(out_dir, [str(exc)]) from None
    problems = manifest_problems(manifest, recorded)
    if not any(s.split == "train" for s in manifest.shards):
        problems.append(f"{MANIFEST_NAME}: no training shards")
    found = (_shard_problem(out_dir, info, manifest, verify=True) for info in manifest.shards)
    problems += [problem for problem in found if problem is not None]
    if problems:
        raise ShardVerificationError(out_dir, problems)
    return manifest


def _join(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    # A single shard stays memory-mapped; several are copied into one array.
    if len(parts) == 1 and parts[0].dtype == dtype:
        return parts[0]
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)
