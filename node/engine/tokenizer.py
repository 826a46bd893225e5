"""Tokenizers: the embedded byte tokenizer and byte-level BPE from a local tokenizer.json.

Nothing here downloads anything: a BPE tokenizer is a file the operator holds
(trained with `train_bpe` / `gradmesh tokenizer train`, or any Hugging Face
tokenizer.json), identified by the sha256 of its bytes, which the shard
manifest records so that every node of a run can check it tokenizes alike.

This module imports only numpy, `tokenizers` and node.errors (no torch), so the
worker processes of `encode_batches` start quickly.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from node.errors import ConfigError, DataError

EOT_TOKEN = "<|endoftext|>"
# special tokens tried, in order, when a loaded tokenizer.json is given no end-of-text token
EOT_CANDIDATES = (EOT_TOKEN, "<|end_of_text|>", "</s>", "<eos>")
BYTE_TOKENIZER_ID = b"gradmesh-byte-tokenizer-v1"
# the byte tokenizer has no file: its identity is the sha256 of this fixed, versioned name
BYTE_TOKENIZER_SHA256 = hashlib.sha256(BYTE_TOKENIZER_ID).hexdigest()
BYTE_DOCUMENT_END = b"\n\n"  # what the byte tokenizer appends after every document
MAX_VOCAB = 2**32

T = TypeVar("T")


class TokenizerFileError(DataError):
    """A tokenizer file is missing, is not a tokenizer.json, or lacks its end-of-text token."""


class TokenizerWorkerError(DataError):
    """A tokenizer worker process died (killed, out of memory) before finishing its batch."""


@runtime_checkable
class Tokenizer(Protocol):
    """What data preparation, training and generation need from a tokenizer.

    Contract:
    - `encode(text)` -> 1-D array of unsigned integer ids, each `< vocab_size`
      (dtype uint8, uint16 or uint32, wide enough for the vocabulary). It adds
      no special tokens of its own: no BOS, no end-of-text.
    - `encode_batch(texts)` == `[encode(t) for t in texts]`, possibly faster;
      every text is encoded independently of the others in its batch.
    - `decode(ids)` -> text; ids may be a numpy array, a list or a torch tensor.
      `decode(encode(t)) == t` for valid text.
    - `vocab_size`: one more than the largest id the tokenizer can produce.
    - `eot_id`: the end-of-text id. Data preparation appends `document_end`
      after every document, and `document_end` always ends with `eot_id`.
    - `document_end`: the ids appended after each document; `(eot_id,)` for a
      BPE tokenizer, the two newlines of b"\\n\\n" for the byte tokenizer.
    - `special_ids`: special token name -> id (the end-of-text token among them
      when the tokenizer has one as a special token).
    - `sha256`: hex sha256 identifying the tokenizer: of its file's bytes, or
      BYTE_TOKENIZER_SHA256 for the byte tokenizer. Equal hashes, equal ids.
    - Instances pickle (worker processes receive one through `encode_batches`).
    """

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    @property
    def document_end(self) -> tuple[int, ...]: ...

    @property
    def special_ids(self) -> Mapping[str, int]: ...

    @property
    def sha256(self) -> str: ...

    def encode(self, text: str) -> np.ndarray: ...

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Any) -> str: ...


def _as_id_array(ids: Any) -> np.ndarray:
    if hasattr(ids, "detach"):  # a torch tensor, without importing torch here
        ids = ids.detach().cpu().numpy()
    return np.asarray(ids)


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """The narrowest unsigned dtype of shards and encodings: uint16 up to 65536 ids, else uint32."""
    if not 0 < vocab_size <= MAX_VOCAB:
        raise ConfigError(f"vocab_size must lie in [1, 2^32], got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class ByteTokenizer:
    """UTF-8 bytes as tokens: no vocabulary file, nothing to download.

    Kept as the embedded default. For backwards compatibility with the stdlib
    corpus, every document ends with b"\\n\\n" (ids 10, 10) rather than a
    dedicated end-of-text id: `eot_id` is 10, the newline, which also occurs
    inside documents. It has no special tokens.
    """

    vocab_size = 256
    eot_id = BYTE_DOCUMENT_END[-1]
    document_end = tuple(BYTE_DOCUMENT_END)
    special_ids: Mapping[str, int] = MappingProxyType({})
    sha256 = BYTE_TOKENIZER_SHA256

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).copy()

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, tokens: Any) -> str:
        arr = _as_id_array(tokens)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError("byte tokens must lie in [0, 255]")
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class BPETokenizer:
    """A Hugging Face `tokenizers` tokenizer loaded from a local tokenizer.json.

    Encodes without the file's post-processor templates (no BOS/EOS added):
    data preparation appends the end-of-text id itself.
    """

    def __init__(self, raw: bytes, *, source: str = "<memory>", eot_token: str | None = None
                 ) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._hf = HFTokenizer.from_str(raw.decode("utf-8"))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise TokenizerFileError(f"tokenizer {source}: not a valid tokenizer.json "
                                     f"({str(exc)[:200]})") from None
        self._raw = raw
        self._source = source
        self._sha256 = hashlib.sha256(raw).hexdigest()
        vocab = self._hf.get_vocab(with_added_tokens=True)
        if not vocab:
            raise TokenizerFileError(f"tokenizer {source}: empty vocabulary")
        self._vocab_size = max(vocab.values()) + 1
        if self._vocab_size > MAX_VOCAB:
            raise TokenizerFileError(f"tokenizer {source}: {self._vocab_size} ids exceed 2^32")
        self._dtype = token_dtype(self._vocab_size)
        self._special = {t.content: i for i, t in
                         sorted(self._hf.get_added_tokens_decoder().items()) if t.special}
        self._eot_token = self._find_eot(eot_token, vocab)
        self._eot_id = vocab[self._eot_token]

    def _find_eot(self, eot_token: str | None, vocab: Mapping[str, int]) -> str:
        if eot_token is not None:
            if eot_token not in vocab:
                raise TokenizerFileError(f"tokenizer {self._source}: no token {eot_token!r} "
                                         f"(the end-of-text token asked for)")
            return eot_token
        for candidate in EOT_CANDIDATES:
            if candidate in self._special or candidate in vocab:
                return candidate
        raise TokenizerFileError(
            f"tokenizer {self._source}: no end-of-text token (looked for "
            f"{', '.join(EOT_CANDIDATES)}); name it explicitly (eot_token=...)")

    @classmethod
    def from_file(cls, path: Path | str, *, eot_token: str | None = None) -> BPETokenizer:
        """Load a local tokenizer.json; `eot_token` defaults to the first of EOT_CANDIDATES."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise TokenizerFileError(f"cannot read tokenizer {path}: "
                                     f"{exc.strerror or exc}") from None
        return cls(raw, source=str(path), eot_token=eot_token)

    # --- the Tokenizer protocol ---------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eot_id(self) -> int:
        return self._eot_id

    @property
    def eot_token(self) -> str:
        return self._eot_token

    @property
    def document_end(self) -> tuple[int, ...]:
        return (self._eot_id,)

    @property
    def special_ids(self) -> Mapping[str, int]:
        return dict(self._special)

    @property
    def sha256(self) -> str:
        return self._sha256

    def encode(self, text: str) -> np.ndarray:
        return np.array(self._hf.encode(text, add_special_tokens=False).ids, dtype=self._dtype)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encodings = self._hf.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.array(e.ids, dtype=self._dtype) for e in encodings]

    def decode(self, ids: Any) -> str:
        arr = _as_id_array(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self._vocab_size):
            raise DataError(f"token ids must lie in [0, {self._vocab_size})")
        return self._hf.decode(arr.astype(np.int64).tolist(), skip_special_tokens=False)

    # --- pickling: the file's bytes, re-parsed on the other side ------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_bpe, (self._raw, self._source, self._eot_token))

    def __repr__(self) -> str:
        return (f"BPETokenizer({self._source!r}, vocab_size={self._vocab_size}, "
                f"eot={self._eot_token!r}, sha256={self._sha256[:12]}…)")


def _rebuild_bpe(raw: bytes, source: str, eot_token: str) -> BPETokenizer:
    return BPETokenizer(raw, source=source, eot_token=eot_token)


def load_tokenizer(path: Path | str | None, *, eot_token: str | None = None) -> Tokenizer:
    """The tokenizer of a tokenizer.json at `path`; the byte tokenizer for None."""
    if path is None:
        return ByteTokenizer()
    return BPETokenizer.from_file(path, eot_token=eot_token)


# --- training -------------------------------------------------------------------------------------
def read_text_file(path: Path) -> Iterator[str]:
    """The default reader of `train_bpe`: a whole file, UTF-8 (bad bytes replaced)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if data:
        yield data.decode("utf-8", errors="replace")


def train_bpe(files: Iterable[Path | str], vocab_size: int, out: Path | str, *,
              eot_token: str = EOT_TOKEN, min_frequency: int = 2,
              read: Callable[[Path], Iterable[str]] = read_text_file) -> BPETokenizer:
    """Train a byte-level BPE on `files` and write its tokenizer.json to `out`.

    Deterministic: the files are read in sorted path order (duplicates once),
    every byte is in the initial alphabet, and `tokenizers`' merge order breaks
    ties by pair, so the same inputs give a byte-identical file whatever the
    thread count. `read(path)` yields a file's documents (default: the whole
    file as one document). The end-of-text token is special token 0.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if not 256 + 1 <= vocab_size <= MAX_VOCAB:
        raise ConfigError(f"vocab_size must lie in [257, 2^32] (256 bytes + end-of-text), "
                          f"got {vocab_size}")
    if min_frequency < 1:
        raise ConfigError(f"min_frequency must be >= 1, got {min_frequency}")
    paths = sorted({Path(f) for f in files}, key=lambda p: p.as_posix())
    if not paths:
        raise DataError("no files to train the tokenizer on")
    for path in paths:
        if not path.is_file():
            raise DataError(f"tokenizer training input {path} is not a file")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[eot_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    seen = [0]

    def documents() -> Iterator[str]:
        for path in paths:
            for text in read(path):
                if text:
                    seen[0] += 1
                    yield text

    hf.train_from_iterator(documents(), trainer=trainer)
    if not seen[0]:
        raise DataError(f"tokenizer training inputs hold no text ({len(paths)} files)")
    raw = hf.to_str(pretty=False).encode("utf-8")
    out = Path(out)
    atomic_write(out, raw)
    return BPETokenizer(raw, source=str(out), eot_token=eot_token)


def atomic_write(path: Path, data: bytes) -> None:
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
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


# --- parallel encoding ----------------------------------------------------------------------------
_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    # the processes are the parallelism: one thread each, no oversubscription
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _worker_tokenizer = tokenizer


def _encode_in_worker(texts: list[str]) -> list[np.ndarray]:
    if _worker_tokenizer is None:
        raise TokenizerWorkerError("worker process has no tokenizer (initializer did not run)")
    return _worker_tokenizer.encode_batch(texts)


def default_workers() -> int:
    """Worker processes for BPE encoding: the CPUs this process may use, less one for the
    process that reads inputs and writes shards; 1 (in-process, where `tokenizers` still
    uses its own threads) on a machine with two CPUs or fewer."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1) if cpus > 2 else 1


def encode_batches(tokenizer: Tokenizer, batches: Iterable[tuple[T, Sequence[str]]], *,
                   workers: int = 1, prefetch: int = 4) -> Iterator[tuple[T, list[np.ndarray]]]:
    """`(tag, tokenizer.encode_batch(texts))` for each `(tag, texts)`, in input order.

    `workers <= 1` encodes in this process; otherwise in that many spawned
    worker processes (each gets the tokenizer once, pickled), with at most
    `workers * prefetch` batches in flight. The output does not depend on
    `workers`.
    """
    if workers <= 1:
        for tag, texts in batches:
            yield tag, tokenizer.encode_batch(texts)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(tokenizer,))
    pending: deque[tuple[T, Future[list[np.ndarray]]]] = deque()
    try:
        for tag, texts in batches:
            pending.append((tag, pool.submit(_encode_in_worker, list(texts))))
            if len(pending) >= workers * max(1, prefetch):
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(item: tuple[T, Future[list[np.ndarray]]]) -> tuple[T, list[np.ndarray]]:
    tag, future = item
    try:
        return tag, future.result()
    except BrokenProcessPool as exc:
        raise TokenizerWorkerError(f"a tokenizer worker process died ({exc})") from None
