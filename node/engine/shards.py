"""Prepared token shards: `gradmesh data prepare` writes them, training memory-maps them.

Layout of a shard directory: `train-00000.bin`, ..., `heldout-00000.bin`, ...
(raw little-endian token arrays) and `manifest.json`, which records each shard's
token count and sha256 so a loader can refuse truncated or altered data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from node.engine.data import DOC_SEPARATOR, ByteTokenizer, Corpus, check_fraction, path_in_heldout
from node.errors import ConfigError, DataError

FORMAT = "gradmesh-shards"
VERSION = 1
MANIFEST_NAME = "manifest.json"
DEFAULT_SUFFIXES = frozenset({".txt", ".md", ".py", ".json", ".jsonl"})
SPLITS = ("train", "heldout")
_SHARD_NAME = re.compile(r"^(train|heldout)-\d{5,}\.bin$")


def token_dtype(vocab_size: int) -> str:
    """Little-endian dtype name for a vocabulary (uint16 up to 65535 ids, else uint32)."""
    return "<u2" if vocab_size <= 65535 else "<u4"


@dataclass(frozen=True)
class ShardInfo:
    file: str
    split: str
    tokens: int
    sha256: str


@dataclass(frozen=True)
class ShardManifest:
    vocab_size: int
    dtype: str
    shards: tuple[ShardInfo, ...]
    sources: int
    tokenizer: str = "bytes"
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> str:
        body = asdict(self)
        body["shards"] = [asdict(s) for s in self.shards]
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardManifest:
        try:
            body = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise DataError(f"{MANIFEST_NAME}: top level must be an object")
        if body.get("format") != FORMAT:
            raise DataError(f"{MANIFEST_NAME}: format {body.get('format')!r} != {FORMAT!r}")
        if body.get("version") != VERSION:
            raise DataError(f"{MANIFEST_NAME}: unsupported version {body.get('version')!r}")
        raw_shards = body.get("shards")
        if not isinstance(raw_shards, list):
            raise DataError(f"{MANIFEST_NAME}: 'shards' must be a list")
        manifest = cls(
            vocab_size=_field(body, "vocab_size", int),
            dtype=_field(body, "dtype", str),
            shards=tuple(_shard_info(s) for s in raw_shards),
            sources=_field(body, "sources", int),
            tokenizer=_field(body, "tokenizer", str),
        )
        if manifest.dtype not in ("<u2", "<u4") or manifest.vocab_size <= 0:
            raise DataError(f"{MANIFEST_NAME}: bad dtype/vocab {manifest.dtype!r}/"
                            f"{manifest.vocab_size}")
        return manifest


def _field(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    # bool is an int subclass; a true/false count is still malformed.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{MANIFEST_NAME}: field {key!r} must be {kind.__name__}, got {value!r}")
    return value


def _shard_info(raw: object) -> ShardInfo:
    if not isinstance(raw, dict):
        raise DataError(f"{MANIFEST_NAME}: shard entry must be an object, got {raw!r}")
    info = ShardInfo(file=_field(raw, "file", str), split=_field(raw, "split", str),
                     tokens=_field(raw, "tokens", int), sha256=_field(raw, "sha256", str))
    if not _SHARD_NAME.match(info.file) or not info.file.startswith(info.split):
        raise DataError(f"{MANIFEST_NAME}: bad shard file name {info.file!r}")
    if info.tokens <= 0 or not re.fullmatch(r"[0-9a-f]{64}", info.sha256):
        raise DataError(f"{MANIFEST_NAME}: shard {info.file}: bad token count or sha256")
    return info


def normalize_suffixes(suffixes: Iterable[str]) -> frozenset[str]:
    """Accept "txt" as well as ".txt"."""
    if isinstance(suffixes, str):
        suffixes = [suffixes]  # a lone string would otherwise be split into characters
    result = frozenset(s if s.startswith(".") else f".{s}" for s in suffixes if s)
    if not result:
        raise ConfigError("no file suffixes given")
    return result


def collect_files(inputs: Sequence[Path], suffixes: frozenset[str]) -> list[tuple[str, Path]]:
    """(path relative to its input root, path): inputs in the given order, each sorted."""
    found: list[tuple[str, Path]] = []
    for root in map(Path, inputs):
        if root.is_file():
            found.append((root.name, root))
        elif root.is_dir():
            files = [p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes]
            found += sorted((p.relative_to(root).as_posix(), p) for p in files)
        else:
            raise DataError(f"input {root} is neither a file nor a directory")
    return found


class _ShardWriter:
    """Streams tokens of one split into fixed-size shard files, written atomically."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int, dtype: str) -> None:
        self.out_dir, self.split, self.dtype = out_dir, split, np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.written: list[ShardInfo] = []

    def add(self, tokens: np.ndarray) -> None:
        self.pending.append(tokens.astype(self.dtype))
        self.pending_tokens += len(tokens)
        if self.pending_tokens < self.shard_tokens:
            return
        # Join once, then cut full shards off the front (no quadratic re-joining).
        data = np.concatenate(self.pending)
        while len(data) >= self.shard_tokens:
            self._write(data[: self.shard_tokens])
            data = data[self.shard_tokens :]
        self.pending, self.pending_tokens = ([data] if len(data) else []), len(data)

    def finish(self) -> list[ShardInfo]:
        if self.pending_tokens:
            self._write(np.concatenate(self.pending))
            self.pending, self.pending_tokens = [], 0
        return self.written

    def _write(self, chunk: np.ndarray) -> None:
        name = f"{self.split}-{len(self.written):05d}.bin"
        raw = chunk.tobytes()
        atomic_write(self.out_dir / name, raw)
        info = ShardInfo(name, self.split, len(chunk), hashlib.sha256(raw).hexdigest())
        self.written.append(info)


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_shards(inputs: Sequence[Path], out_dir: Path, *, shard_tokens: int = 64 * 2**20,
                   heldout_fraction: float = 0.05, suffixes: Iterable[str] = DEFAULT_SUFFIXES,
                   progress: Callable[[int, int], None] | None = None) -> ShardManifest:
    """Tokenize text files into train/held-out shards; `progress(files_done, files_total)`."""
    check_fraction(heldout_fraction)
    if shard_tokens <= 0:
        raise ConfigError(f"shard_tokens must be positive, got {shard_tokens}")
    wanted = normalize_suffixes(suffixes)
    files = collect_files(inputs, wanted)
    if not files:
        raise DataError(f"no input files with suffixes {sorted(wanted)} in "
                        f"{[str(p) for p in inputs]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = ByteTokenizer()
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: _ShardWriter(out_dir, s, shard_tokens, dtype) for s in SPLITS}
    sources = 0
    for done, (rel, path) in enumerate(files, start=1):
        tokens = _tokenize_file(tokenizer, path)
        if tokens is not None:
            split = "heldout" if path_in_heldout(rel, heldout_fraction) else "train"
            writers[split].add(tokens)
            sources += 1
        if progress is not None:
            progress(done, len(files))
    shards = tuple(info for s in SPLITS for info in writers[s].finish())
    if not any(s.split == "train" for s in shards):
        raise DataError(f"inputs yielded no training tokens ({sources} readable non-empty files)")
    manifest = ShardManifest(vocab_size=tokenizer.vocab_size, dtype=dtype, shards=shards,
                             sources=sources)
    atomic_write(out_dir / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
    _remove_stale(out_dir, {s.file for s in shards})
    return manifest


def _tokenize_file(tokenizer: ByteTokenizer, path: Path) -> np.ndarray | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None  # unreadable input files are skipped like in the stdlib corpus
    return tokenizer.encode(data + DOC_SEPARATOR) if data else None


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Drop shards of an earlier prepare run that the new manifest no longer lists."""
    for path in out_dir.iterdir():
        if _SHARD_NAME.match(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)


def read_manifest(out_dir: Path) -> ShardManifest:
    path = Path(out_dir) / MANIFEST_NAME
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return ShardManifest.from_json(text)


def _open_shard(out_dir: Path, info: ShardInfo, manifest: ShardManifest,
                verify: bool) -> np.ndarray:
    path = out_dir / info.file
    dtype = np.dtype(manifest.dtype)
    try:
        size = path.stat().st_size
    except OSError:
        raise DataError(f"shard {path} is missing") from None
    if size != info.tokens * dtype.itemsize:
        raise DataError(f"shard {path}: {size} bytes, manifest says "
                        f"{info.tokens * dtype.itemsize}")
    if verify and _file_sha256(path) != info.sha256:
        raise DataError(f"shard {path}: sha256 does not match the manifest")
    tokens = np.memmap(path, dtype=dtype, mode="r", shape=(info.tokens,))
    if verify and int(tokens.max()) >= manifest.vocab_size:
        raise DataError(f"shard {path}: token id >= vocab_size {manifest.vocab_size}")
    return tokens


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in _blocks(fh):
            digest.update(block)
    return digest.hexdigest()


def _blocks(fh: Any, size: int = 1 << 22) -> Iterator[bytes]:
    while block := fh.read(size):
        yield block


def load_shards(out_dir: Path, *, verify: bool = True) -> Corpus:
    """Memory-map a prepared shard directory as a Corpus (verifying hashes by default)."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    arrays: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for info in manifest.shards:
        if info.split not in arrays:
            raise DataError(f"{MANIFEST_NAME}: shard {info.file} has unknown split {info.split!r}")
        arrays[info.split].append(_open_shard(out_dir, info, manifest, verify))
    if not arrays["train"]:
        raise DataError(f"{out_dir / MANIFEST_NAME}: no training shards")
    dtype = np.dtype(manifest.dtype).newbyteorder("=")
    train, heldout = (_join(arrays[s], dtype) for s in SPLITS)
    source = f"token shards in {out_dir} ({manifest.sources} source files)"
    return Corpus(train=train, heldout=heldout, source=source, vocab_size=manifest.vocab_size)


def _join(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    # A single shard stays memory-mapped; several are copied into one array.
    if len(parts) == 1 and parts[0].dtype == dtype:
        return parts[0]
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)
