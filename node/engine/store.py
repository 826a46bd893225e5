"""Local checkpoints on disk: atomic writes, content-hashed, no pickle.

Files may be copied between machines, so they hold only data: an 8-byte magic,
a 4-byte little-endian header length, a canonical-msgpack header and raw fp32
little-endian tensor bytes. The header is

    [version, window, meta, params, extra, sha256]

with `params` = [[shape, dtype], ...], `extra` = [[name, shape, dtype], ...],
`meta` = [[key, kind, value], ...] sorted by key (kind "s" / "i" / "f"; a float
travels as 8 IEEE-754 bytes because canonical msgpack carries no floats) and
`sha256` over the header's other fields (canonically packed) followed by the
body, so a flipped bit anywhere — window and meta included — is detected.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from node.errors import CheckpointError, ConfigError, CorruptCheckpointError
from protocol import canonical
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)

MetaValue = str | int | float
_MAGIC = b"GMCKPT\x00\x01"
_PREFIX = struct.Struct("<8sI")
_VERSION = 1
_MAX_HEADER_BYTES = 1024 * 1024
_MAX_NAME_LEN = 200
_MAX_META_STR_LEN = 256
_I64 = (-(2**63), 2**63 - 1)
_FILE_RE = re.compile(r"ckpt-(\d{12})\.gmck")
_FP32 = np.dtype("<f4")


@dataclass(frozen=True)
class LocalCheckpoint:
    window: int
    params: list[torch.Tensor]
    extra: dict[str, torch.Tensor]
    meta: dict[str, MetaValue]
    path: Path


def fp32_bytes(tensor: torch.Tensor) -> bytes:
    """One tensor as contiguous fp32 little-endian bytes (moved to CPU first)."""
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    # astype is a no-op on little-endian hosts; on big-endian ones it fixes the byte order
    return array.astype(_FP32, copy=False).tobytes()


# --- header pieces -------------------------------------------------------------------


def _meta_to_wire(meta: Mapping[str, MetaValue]) -> list[canonical.WireValue]:
    wire: list[canonical.WireValue] = []
    for key in sorted(meta):
        value = meta[key]
        if not isinstance(key, str) or not 0 < len(key.encode()) <= _MAX_NAME_LEN:
            raise CheckpointError(f"meta key {key!r}: not a short non-empty string")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            # bool would silently come back as int: refuse rather than change its type
            raise CheckpointError(f"meta {key!r}: {type(value).__name__} is not str, int, float")
        if isinstance(value, float):
            wire.append([key, "f", struct.pack("<d", value)])
        elif isinstance(value, int):
            if not _I64[0] <= value <= _I64[1]:
                raise CheckpointError(f"meta {key!r}: integer outside int64")
            wire.append([key, "i", value])
        elif len(value.encode()) > _MAX_META_STR_LEN:
            raise CheckpointError(f"meta {key!r}: string longer than {_MAX_META_STR_LEN} bytes")
        else:
            wire.append([key, "s", value])
    return wire


def _meta_from_wire(value: canonical.WireValue) -> dict[str, MetaValue]:
    if not isinstance(value, list):
        raise CorruptCheckpointError("meta: expected an array")
    meta: dict[str, MetaValue] = {}
    for entry in value:
        key, kind, raw = canonical.expect_list(entry, 3, "meta entry")
        name = canonical.expect_str(key, "meta key", max_len=_MAX_NAME_LEN)
        if kind == "f":
            meta[name] = struct.unpack("<d", canonical.expect_bytes(raw, "meta", length=8))[0]
        elif kind == "i":
            meta[name] = canonical.expect_int(raw, "meta", lo=_I64[0], hi=_I64[1])
        elif kind == "s":
            meta[name] = canonical.expect_str(raw, "meta", max_len=_MAX_META_STR_LEN)
        else:
            raise CorruptCheckpointError(f"meta {name!r}: unknown kind {kind!r}")
    return meta


def _shape_from_wire(value: canonical.WireValue) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 8:
        raise CorruptCheckpointError("tensor shape: expected an array of at most 8 dims")
    return tuple(canonical.expect_int(d, "dim", hi=2**40) for d in value)


def _entry_from_wire(value: canonical.WireValue, named: bool) -> tuple[str, tuple[int, ...]]:
    items = canonical.expect_list(value, 3 if named else 2, "tensor entry")
    name = canonical.expect_str(items[0], "tensor name", max_len=_MAX_NAME_LEN) if named else ""
    if items[-1] != "float32":
        raise CorruptCheckpointError(f"tensor {name!r}: dtype {items[-1]!r} is not float32")
    return name, _shape_from_wire(items[-2])


# --- writing -------------------------------------------------------------------------


def _write_file(handle: IO[bytes], window: int, params: Sequence[torch.Tensor],
                extra: Mapping[str, torch.Tensor], meta: Mapping[str, MetaValue]) -> None:
    for name in extra:
        if not isinstance(name, str) or not 0 < len(name.encode()) <= _MAX_NAME_LEN:
            raise CheckpointError(f"extra tensor name {name!r}: not a short non-empty string")
    fields: list[canonical.WireValue] = [
        _VERSION, window, _meta_to_wire(meta),
        [[list(p.shape), "float32"] for p in params],
        [[name, list(t.shape), "float32"] for name, t in extra.items()],
    ]
    digest = hashlib.sha256(canonical.pack(fields))
    # the digest is a fixed-size bin at the header's end: write a placeholder, patch it later
    header = canonical.pack([*fields, bytes(32)])
    handle.write(_PREFIX.pack(_MAGIC, len(header)) + header)
    for tensor in [*params, *extra.values()]:
        body = fp32_bytes(tensor)  # one tensor at a time keeps peak memory low
        digest.update(body)
        handle.write(body)
    handle.seek(_PREFIX.size + len(header) - 32)
    handle.write(digest.digest())


def _fsync_dir(directory: Path) -> None:
    # the rename itself must reach the disk, or a crash can lose the new file
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading -------------------------------------------------------------------------


def _read_header(handle: io.BufferedReader) -> list[canonical.WireValue]:
    prefix = handle.read(_PREFIX.size)
    if len(prefix) != _PREFIX.size:
        raise CorruptCheckpointError("file ends inside its prefix")
    magic, length = _PREFIX.unpack(prefix)
    if magic != _MAGIC or length > _MAX_HEADER_BYTES:
        raise CorruptCheckpointError("not a gradmesh checkpoint (bad magic or header length)")
    raw = handle.read(length)
    value = canonical.unpack(raw, max_bytes=_MAX_HEADER_BYTES, max_bin_len=32,
                             max_array_len=65536, max_str_len=_MAX_META_STR_LEN)
    return canonical.expect_list(value, 6, "checkpoint header")


def _read_tensor(handle: io.BufferedReader, shape: tuple[int, ...], digest: hashlib._Hash
                 ) -> torch.Tensor:
    buffer = bytearray(4 * math.prod(shape))
    if handle.readinto(buffer) != len(buffer):
        raise CorruptCheckpointError("file ends inside its tensor data")
    digest.update(buffer)
    # a bytearray is writable, so the tensor owns a private writable copy of the data
    array = np.frombuffer(buffer, dtype=_FP32).astype(np.float32, copy=False)
    return torch.from_numpy(array).reshape(shape)


def _read_file(path: Path) -> LocalCheckpoint:
    with path.open("rb") as handle:
        items = _read_header(handle)
        if canonical.expect_int(items[0], "version") != _VERSION:
            raise CorruptCheckpointError(f"unsupported checkpoint file version {items[0]!r}")
        window = canonical.expect_int(items[1], "window")
        meta = _meta_from_wire(items[2])
        params = [_entry_from_wire(e, False)[1] for e in _as_list(items[3])]
        extra = [_entry_from_wire(e, True) for e in _as_list(items[4])]
        stored = canonical.expect_bytes(items[5], "sha256", length=32)
        shapes = [*params, *(shape for _, shape in extra)]
        body = 4 * sum(math.prod(s) for s in shapes)
        # checked before allocating, so a forged header cannot ask for huge buffers
        if os.fstat(handle.fileno()).st_size != handle.tell() + body:
            raise CorruptCheckpointError("file size does not match its header")
        digest = hashlib.sha256(canonical.pack(items[:5]))
        tensors = [_read_tensor(handle, shape, digest) for shape in shapes]
    if digest.digest() != stored:
        raise CorruptCheckpointError("content SHA-256 mismatch")
    return LocalCheckpoint(window=window, params=tensors[:len(params)],
                           extra={name: t for (name, _), t in zip(extra, tensors[len(params):],
                                                                 strict=True)},
                           meta=meta, path=path)


def _as_list(value: canonical.WireValue) -> list[canonical.WireValue]:
    if not isinstance(value, list):
        raise CorruptCheckpointError("tensor entries: expected an array")
    return value


# --- the store -----------------------------------------------------------------------


class CheckpointStore:
    """The `keep` newest checkpoints of one node, one file per window."""

    def __init__(self, directory: Path, keep: int = 3) -> None:
        if keep < 1:
            raise ConfigError(f"checkpoint store must keep at least 1 file, not {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, window: int) -> Path:
        return self.directory / f"ckpt-{window:012d}.gmck"

    def paths(self) -> list[Path]:
        """Checkpoint files, newest window first (temp files and strangers ignored)."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir()
                 if (m := _FILE_RE.fullmatch(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, window: int, params: Sequence[torch.Tensor],
             extra: Mapping[str, torch.Tensor] | None = None,
             meta: Mapping[str, MetaValue] | None = None) -> Path:
        """Write atomically (temp file, fsync, rename), then prune old files."""
        if not 0 <= window < 10**12:
            raise CheckpointError(f"window {window} outside [0, 10**12)")
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path_for(window)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".ckpt-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                _write_file(handle, window, params, extra or {}, meta or {})
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        self._prune()
        return target

    def load(self, path: Path) -> LocalCheckpoint:
        """Read and verify one file; raise `CorruptCheckpointError` on any defect."""
        try:
            checkpoint = _read_file(Path(path))
        except ProtocolError as exc:
            raise CorruptCheckpointError(f"{path}: malformed header: {exc}") from exc
        except OSError as exc:
            raise CorruptCheckpointError(f"{path}: unreadable: {exc}") from exc
        except CorruptCheckpointError as exc:
            raise CorruptCheckpointError(f"{path}: {exc}") from exc
        match = _FILE_RE.fullmatch(Path(path).name)
        if match and int(match.group(1)) != checkpoint.window:
            raise CorruptCheckpointError(f"{path}: holds window {checkpoint.window}")
        return checkpoint

    def latest(self) -> LocalCheckpoint | None:
        """Newest checkpoint that verifies; damaged newer files are skipped with a warning."""
        for path in self.paths():
            try:
                return self.load(path)
            except CorruptCheckpointError as exc:
                log.warning("skipping damaged checkpoint: %s", exc)
        return None

    def _prune(self) -> None:
        for path in self.paths()[self.keep:]:
            path.unlink(missing_ok=True)
