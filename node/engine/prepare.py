"""Preparing token shards (`gradmesh data prepare`): documents in, shards and manifest out.

This module owns the held-out rule, tokenizing in worker processes, and
writing the shards and the manifest whose format `node.engine.manifest`
defines (and whose loader in `node.engine.shards` reads them back). Finding
the input files and reading their documents is `node.engine.documents`'s.

Every document is followed by the tokenizer's `document_end` (its end-of-text
id; b"\\n\\n" for bytes).

Split rule: a document is held out iff the first 8 bytes of sha256(its UTF-8
text), big-endian, divided by 2^64, fall below `heldout_fraction`: by content,
so duplicates land in the same split whatever file or position they come from.

Shards are written atomically as they fill; the old manifest is removed first
and the new one written last, so a half-written folder never verifies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from node.engine.data import check_fraction
from node.engine.documents import (
    DEFAULT_SUFFIXES,
    Skipped,
    collect_files,
    documents_with_offsets,
    file_size,
    normalize_suffixes,
)
from node.engine.manifest import (
    MANIFEST_NAME,
    SPLITS,
    ShardInfo,
    ShardManifest,
    SplitStats,
    TokenizerInfo,
    is_shard_file,
    shard_file,
    token_dtype,
)
from node.engine.tokenizer import ByteTokenizer, Tokenizer, atomic_write, encode_batches
from node.errors import ConfigError, DataError

DEFAULT_SHARD_TOKENS = 64 * 2**20
BATCH_CHARS = 1 << 20  # text per tokenizer batch (one worker task)
BATCH_DOCS = 4096


def document_in_heldout(text: str, heldout_fraction: float) -> bool:
    """The split rule: held out iff sha256(UTF-8 text)[:8] / 2^64 < heldout_fraction."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction



# --- writing --------------------------------------------------------------------------------------
class _ShardWriter:
    """Streams tokens of one split into fixed-size shard files, written atomically."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int, dtype: str) -> None:
        self.out_dir, self.split, self.dtype = out_dir, split, np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.written: list[ShardInfo] = []
        self.documents = 0
        self.tokens = 0

    def add(self, document: np.ndarray, end: np.ndarray) -> None:
        self.pending += (document, end)
        n = len(document) + len(end)
        self.pending_tokens += n
        self.documents += 1
        self.tokens += n
        if self.pending_tokens < self.shard_tokens:
            return
        # Join once, then cut full shards off the front (no quadratic re-joining).
        data = np.concatenate(self.pending).astype(self.dtype, copy=False)
        while len(data) >= self.shard_tokens:
            self._write(data[: self.shard_tokens])
            data = data[self.shard_tokens :]
        self.pending, self.pending_tokens = ([data] if len(data) else []), len(data)

    def finish(self) -> list[ShardInfo]:
        if self.pending_tokens:
            self._write(np.concatenate(self.pending).astype(self.dtype, copy=False))
            self.pending, self.pending_tokens = [], 0
        return self.written

    def stats(self) -> SplitStats:
        return SplitStats(documents=self.documents, tokens=self.tokens, shards=len(self.written))

    def _write(self, chunk: np.ndarray) -> None:
        name = shard_file(self.split, len(self.written))
        raw = chunk.tobytes()
        atomic_write(self.out_dir / name, raw)
        info = ShardInfo(name, self.split, len(chunk), hashlib.sha256(raw).hexdigest())
        self.written.append(info)


# --- preparing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrepareProgress:
    """Where a preparation stands: input bytes tokenized, documents and tokens so far."""

    bytes_done: int
    bytes_total: int
    documents: int
    tokens: int


@dataclass
class _Batch:
    """The tag of one tokenizer batch: input bytes consumed by its end, a split per text."""

    bytes_done: int
    heldout: list[bool] = field(default_factory=list)


def prepare_shards(inputs: Sequence[Path], out_dir: Path, *, tokenizer: Tokenizer | None = None,
                   text_field: str = "text", workers: int = 1,
                   shard_tokens: int = DEFAULT_SHARD_TOKENS, heldout_fraction: float = 0.05,
                   suffixes: Iterable[str] = DEFAULT_SUFFIXES, skip_bad_records: bool = False,
                   progress: Callable[[PrepareProgress], None] | None = None) -> ShardManifest:
    """Tokenize text, .jsonl and .parquet inputs into train/held-out shards (see the module
    docstrings here, in `node.engine.documents` and in `node.engine.manifest` for the
    inputs, the split and the manifest).

    `tokenizer` defaults to the byte tokenizer. `workers > 1` tokenizes in that
    many spawned processes (`encode_batches`; a script calling this with
    workers > 1 needs the `if __name__ == "__main__":` guard spawn asks for);
    the documents are reassembled in input order, so the shards and the
    manifest do not depend on `workers`. `progress` is called after every
    tokenized batch and once at the end.
    """
    _check_settings(heldout_fraction, shard_tokens, workers, text_field)
    tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
    info, end = _tokenizer_info(tokenizer)
    out_dir = Path(out_dir)
    files = _input_files(inputs, out_dir, normalize_suffixes(suffixes))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # a half-written folder never verifies
    run = _Run(out_dir, info, files, shard_tokens, heldout_fraction, text_field,
               skip_bad_records, progress)
    for batch, encoded in encode_batches(tokenizer, run.batches(), workers=workers):
        run.add(batch, encoded, end)
    return run.finish()


def _check_settings(heldout_fraction: float, shard_tokens: int, workers: int,
                    text_field: str) -> None:
    check_fraction(heldout_fraction)
    if shard_tokens <= 0:
        raise ConfigError(f"shard_tokens must be positive, got {shard_tokens}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if not text_field:
        raise ConfigError("text_field must not be empty")


def _tokenizer_info(tokenizer: Tokenizer) -> tuple[TokenizerInfo, np.ndarray]:
    """(its manifest entry, its document_end ids), once document_end ends with eot_id."""
    info = TokenizerInfo.of(tokenizer)
    if not info.document_end or info.document_end[-1] != info.eot_id:
        raise ConfigError(f"tokenizer document_end {info.document_end} must end with its "
                          f"eot_id {info.eot_id}")
    end = _checked_ids(np.asarray(info.document_end), info.vocab_size, "document_end")
    return info, end


def _input_files(inputs: Sequence[Path], out_dir: Path,
                 suffixes: frozenset[str]) -> list[tuple[Path, int]]:
    """(path, size) of each input file, leaving out those inside `out_dir`; at least one."""
    inside_out = out_dir.resolve()
    files = [(path, file_size(path)) for _, path in collect_files(inputs, suffixes)
             if inside_out not in path.resolve().parents]  # not our own manifest
    if not files:
        raise DataError(f"no input files with suffixes {sorted(suffixes)} in "
                        f"{[str(p) for p in inputs]}")
    return files


@dataclass
class _Run:
    """One preparation: its inputs and settings, a shard writer per split, what it skipped."""

    out_dir: Path
    info: TokenizerInfo
    files: list[tuple[Path, int]]
    shard_tokens: int
    heldout_fraction: float
    text_field: str
    skip_bad_records: bool
    progress: Callable[[PrepareProgress], None] | None
    skipped: Skipped = field(default_factory=Skipped)
    dtype: str = field(init=False)
    total: int = field(init=False)  # input bytes
    writers: dict[str, _ShardWriter] = field(init=False)

    def __post_init__(self) -> None:
        self.dtype = token_dtype(self.info.vocab_size)
        self.writers = {s: _ShardWriter(self.out_dir, s, self.shard_tokens, self.dtype)
                        for s in SPLITS}
        self.total = sum(size for _, size in self.files)

    def batches(self) -> Iterator[tuple[_Batch, list[str]]]:
        """The documents of every input, in order, cut into tokenizer batches."""
        texts: list[str] = []
        chars, before = 0, 0
        batch = _Batch(0)
        for path, size in self.files:
            for text, consumed in documents_with_offsets(path, self.text_field,
                                                         self.skip_bad_records, self.skipped):
                texts.append(text)
                batch.heldout.append(document_in_heldout(text, self.heldout_fraction))
                batch.bytes_done = before + consumed
                chars += len(text)
                if len(texts) >= BATCH_DOCS or chars >= BATCH_CHARS:
                    yield batch, texts
                    texts, chars, batch = [], 0, _Batch(batch.bytes_done)
            before += size
        if texts:
            yield batch, texts

    def add(self, batch: _Batch, encoded: list[np.ndarray], end: np.ndarray) -> None:
        """Hand each tokenized document, then `end`, to its split's writer."""
        for held, ids in zip(batch.heldout, encoded, strict=True):
            self.writers["heldout" if held else "train"].add(
                _checked_ids(ids, self.info.vocab_size, "tokenizer output"), end)
        self.report(batch.bytes_done)

    def report(self, done: int) -> None:
        if self.progress is not None:
            self.progress(PrepareProgress(done, self.total,
                                          sum(w.documents for w in self.writers.values()),
                                          sum(w.tokens for w in self.writers.values())))

    def finish(self) -> ShardManifest:
        """Write the last shards and the manifest, drop stale shards, report the end."""
        shards = tuple(s for name in SPLITS for s in self.writers[name].finish())
        if not any(s.split == "train" for s in shards):
            raise DataError(f"inputs yielded no training tokens ({len(self.files)} files, "
                            f"{self.skipped.empty} empty and {self.skipped.bad_records} bad "
                            f"records skipped)")
        manifest = self.manifest(shards)
        atomic_write(self.out_dir / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
        _remove_stale(self.out_dir, {s.file for s in shards})
        self.report(self.total)
        return manifest

    def manifest(self, shards: tuple[ShardInfo, ...]) -> ShardManifest:
        return ShardManifest(
            tokenizer=self.info, dtype=self.dtype, shards=shards,
            train=self.writers["train"].stats(), heldout=self.writers["heldout"].stats(),
            sources=len(self.files), heldout_fraction=float(self.heldout_fraction),
            shard_tokens=self.shard_tokens, text_field=self.text_field,
            skipped_empty=self.skipped.empty, skipped_bad_records=self.skipped.bad_records,
        )  # fmt: skip


def _checked_ids(ids: np.ndarray, vocab_size: int, what: str) -> np.ndarray:
    """`ids`, once it is a 1-D integer array of ids inside the vocabulary."""
    if ids.ndim != 1 or ids.dtype.kind not in "ui":
        raise DataError(f"{what}: need a 1-D integer array, got {ids.ndim}-D {ids.dtype}")
    if ids.size and (int(ids.max()) >= vocab_size or (ids.dtype.kind == "i" and ids.min() < 0)):
        raise DataError(f"{what}: token id outside [0, {vocab_size})")
    return ids


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Drop shards of an earlier prepare run that the new manifest no longer lists."""
    for path in out_dir.iterdir():
        if is_shard_file(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)
