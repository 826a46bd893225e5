"""The default stdlib corpus, the Corpus type and deterministic batch sampling.

`ByteTokenizer` now lives in node/engine/tokenizer.py (with the BPE tokenizer)
and is re-exported here.

`window_batch` is a pure function of its arguments: a validator recomputes the
exact batches a miner was assigned from (seed, window, uid, step) alone.

torch is imported only when a batch is built, so data preparation (and its
spawned tokenizer workers) starts without it.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from node.engine.tokenizer import BYTE_DOCUMENT_END, BYTE_TOKENIZER_SHA256, ByteTokenizer
from node.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

__all__ = ["DOC_SEPARATOR", "TOKEN_DTYPES", "ByteTokenizer", "Corpus", "check_fraction",
           "derive_seed", "heldout_batches", "path_in_heldout", "sample_offsets",
           "stdlib_corpus", "stdlib_files", "window_batch"]

DOC_SEPARATOR = BYTE_DOCUMENT_END  # the byte tokenizer's document end: b"\n\n"
TOKEN_DTYPES = (np.uint8, np.uint16, np.uint32)
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


@dataclass(frozen=True)
class Corpus:
    train: np.ndarray
    heldout: np.ndarray
    source: str
    vocab_size: int = 256
    tokenizer_sha256: str | None = None  # the tokenizer's identity (None: unknown)
    manifest_sha256: str | None = None  # the shard manifest's hash (None: not from shards)

    def __post_init__(self) -> None:
        for split in ("train", "heldout"):
            arr = getattr(self, split)
            if arr.ndim != 1 or arr.dtype not in TOKEN_DTYPES:
                raise DataError(f"corpus {split}: need a 1-D uint8/16/32 array, "
                                f"got {arr.ndim}-D {arr.dtype}")


def path_in_heldout(relative_path: str, heldout_fraction: float) -> bool:
    """The split rule: a file is held out iff its path hash falls below the fraction."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction


def check_fraction(heldout_fraction: float) -> None:
    if not 0.0 < heldout_fraction < 1.0:
        raise ConfigError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")


def stdlib_files() -> list[tuple[str, Path]]:
    """(relative posix path, path) of every stdlib .py file, sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _EXCLUDED_DIRS.isdisjoint(rel.parts) and path.is_file():
            found.append((rel.as_posix(), path))
    found.sort()
    return found


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None  # unreadable files are skipped, not fatal


@functools.lru_cache(maxsize=8)
def stdlib_corpus(max_bytes: int | None = None, heldout_fraction: float = 0.05) -> Corpus:
    """The running interpreter's standard-library sources as a byte corpus.

    With `max_bytes`, each split is capped separately (held-out gets its fraction
    of the budget, at least one byte) so a small cap still yields both splits.
    """
    check_fraction(heldout_fraction)
    if max_bytes is not None and max_bytes < 2:
        raise ConfigError(f"max_bytes must be >= 2, got {max_bytes}")
    budgets: dict[bool, float] = {False: float("inf"), True: float("inf")}
    if max_bytes is not None:
        budgets[True] = max(1, int(max_bytes * heldout_fraction))
        budgets[False] = max_bytes - budgets[True]
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    used = {False: 0, True: 0}
    n_files = 0
    for rel, path in stdlib_files():
        held = path_in_heldout(rel, heldout_fraction)
        if used[held] >= budgets[held]:
            if all(used[s] >= budgets[s] for s in (False, True)):
                break
            continue
        data = _read(path)
        if data is None:
            continue
        parts[held].append(data + DOC_SEPARATOR)
        used[held] += len(data) + len(DOC_SEPARATOR)
        n_files += 1
    train, heldout = (_join(parts[s], budgets[s]) for s in (False, True))
    if train.size == 0 or heldout.size == 0:
        raise DataError(f"stdlib corpus at {sysconfig.get_paths()['stdlib']} yielded "
                        f"{train.size} train / {heldout.size} held-out bytes")
    source = f"python stdlib .py files ({n_files} files, {sysconfig.get_paths()['stdlib']})"
    return Corpus(train=train, heldout=heldout, source=source, vocab_size=256,
                  tokenizer_sha256=BYTE_TOKENIZER_SHA256)


def _join(parts: list[bytes], budget: float) -> np.ndarray:
    data = b"".join(parts)
    if budget != float("inf"):
        data = data[: int(budget)]
    arr = np.frombuffer(data, dtype=np.uint8)
    arr.flags.writeable = False  # shared through the lru_cache: nobody may mutate it
    return arr


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from sha256 of a canonical, versioned string of the parts."""
    text = "gradmesh/v1|" + "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _check_tokens(tokens: np.ndarray, seq_len: int, batch_size: int) -> None:
    if batch_size <= 0 or seq_len <= 0:
        raise ConfigError(f"batch_size and seq_len must be positive "
                          f"(got {batch_size}, {seq_len})")
    if tokens.ndim != 1:
        raise DataError(f"token array must be 1-D, got shape {tokens.shape}")
    if len(tokens) < seq_len + 1:
        raise DataError(f"need at least {seq_len + 1} tokens for seq_len {seq_len}, "
                        f"have {len(tokens)}")


def sample_offsets(seed: int, count: int, span: int) -> np.ndarray:
    """`count` offsets in [0, span) from SHA-256 in counter mode.

    Defined by a hash, not a library RNG, so any validator on any numpy version
    recomputes the same offsets (modulo bias is below 2^-40 for real corpora).
    """
    prefix = seed.to_bytes(8, "big")
    draws = [int.from_bytes(hashlib.sha256(prefix + i.to_bytes(4, "big")).digest()[:8], "big")
             for i in range(count)]
    return np.array([d % span for d in draws], dtype=np.int64)


def _sample(tokens: np.ndarray, seed: int, batch_size: int, seq_len: int) -> torch.Tensor:
    import torch

    starts = sample_offsets(seed, batch_size, len(tokens) - seq_len)
    index = starts[:, None] + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))


# the assignment no miner holds (uids are 32-bit): each window's public batch, whose
# gradient at θ every peer folds into the public second moment (node/engine/inner.py)
PUBLIC_UID = 2**32 + 11


def window_batch(tokens: np.ndarray, *, seed: int, window: int, uid: int, step: int,
                 batch_size: int, seq_len: int) -> torch.Tensor:
    """The [batch_size, seq_len + 1] int64 batch assigned to (uid, window, step)."""
    _check_tokens(tokens, seq_len, batch_size)
    return _sample(tokens, derive_seed("window", seed, window, uid, step), batch_size, seq_len)


def heldout_batches(tokens: np.ndarray, *, n_batches: int, batch_size: int, seq_len: int,
                    seed: int = 0) -> list[torch.Tensor]:
    """Deterministic evaluation batches (fixed for a given seed)."""
    _check_tokens(tokens, seq_len, batch_size)
    if n_batches <= 0:
        raise ConfigError(f"n_batches must be positive, got {n_batches}")
    return [_sample(tokens, derive_seed("heldout", seed, i), batch_size, seq_len)
            for i in range(n_batches)]
