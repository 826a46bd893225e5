"""Tokenizer, stdlib corpus split and the pure batch-assignment functions."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from node.engine.data import (
    ByteTokenizer,
    Corpus,
    heldout_batches,
    path_in_heldout,
    stdlib_corpus,
    stdlib_files,
    window_batch,
)
from node.errors import ConfigError, DataError

TOKENS = np.arange(10_000, dtype=np.uint16) % 256


def batch(**overrides: int) -> torch.Tensor:
    args = dict(seed=1, window=2, uid=3, step=4, batch_size=4, seq_len=16)
    args.update(overrides)
    return window_batch(TOKENS, **args)


def test_tokenizer_round_trip() -> None:
    tok = ByteTokenizer()
    text = "héllo, wörld ✓"
    ids = tok.encode(text)
    assert ids.dtype == np.uint8
    assert bytes(ids) == text.encode("utf-8")
    assert tok.decode(ids) == text
    assert tok.decode(torch.from_numpy(ids.astype(np.int64))) == text
    assert tok.decode(np.array([0xFF])) == "\ufffd"


def test_byte_tokenizer_moved_but_importable_and_corpus_names_it() -> None:
    from node.engine import tokenizer

    assert ByteTokenizer is tokenizer.ByteTokenizer
    corpus = stdlib_corpus(200_000)
    assert corpus.tokenizer_sha256 == tokenizer.BYTE_TOKENIZER_SHA256
    assert corpus.manifest_sha256 is None  # not prepared shards


def test_split_rule_is_deterministic_hash() -> None:
    assert path_in_heldout("a/b.py", 0.5) == path_in_heldout("a/b.py", 0.5)
    paths = [f"pkg/mod{i}.py" for i in range(2000)]
    share = sum(path_in_heldout(p, 0.05) for p in paths) / len(paths)
    assert 0.03 < share < 0.07


def test_stdlib_corpus_splits_nonempty_and_capped() -> None:
    corpus = stdlib_corpus(200_000)
    assert corpus.train.size > 0
    assert corpus.heldout.size > 0
    assert corpus.train.size + corpus.heldout.size <= 200_000
    assert corpus.vocab_size == 256
    assert stdlib_corpus(200_000) is corpus  # cached


def test_stdlib_split_matches_file_hashes() -> None:
    files = stdlib_files()
    assert not any("site-packages" in rel for rel, _ in files)
    assert [rel for rel, _ in files] == sorted(rel for rel, _ in files)
    held = [rel for rel, _ in files if path_in_heldout(rel, 0.05)]
    assert held
    assert len(held) < len(files) // 5


def test_stdlib_corpus_is_read_only() -> None:
    with pytest.raises(ValueError, match="read-only"):
        stdlib_corpus(200_000).train[0] = 1


def test_bad_fraction_rejected() -> None:
    with pytest.raises(ConfigError):
        stdlib_corpus(1000, heldout_fraction=0.0)


def test_corpus_rejects_bad_arrays() -> None:
    with pytest.raises(DataError):
        Corpus(train=np.zeros((2, 2), np.uint8), heldout=np.zeros(2, np.uint8), source="x")
    with pytest.raises(DataError):
        Corpus(train=np.zeros(2, np.float32), heldout=np.zeros(2, np.uint8), source="x")


def test_window_batch_shape_and_content() -> None:
    b = batch()
    assert b.shape == (4, 17)
    assert b.dtype == torch.int64
    for row in b:  # every row is a contiguous slice of the token stream
        start = int(row[0])
        assert torch.equal(row, torch.arange(start, start + 17) % 256)


def test_window_batch_is_pure() -> None:
    assert torch.equal(batch(), batch())
    for field in ("seed", "window", "uid", "step"):
        assert not torch.equal(batch(), batch(**{field: 99})), field


def test_window_batch_covers_whole_range() -> None:
    tokens = np.arange(20, dtype=np.uint32)
    starts = {int(window_batch(tokens, seed=0, window=0, uid=0, step=s, batch_size=8,
                               seq_len=4)[i, 0]) for s in range(50) for i in range(8)}
    assert starts == set(range(16))  # offsets 0 .. len - seq_len - 1 inclusive


def test_window_batch_too_short() -> None:
    with pytest.raises(DataError):
        window_batch(np.zeros(16, np.uint8), seed=0, window=0, uid=0, step=0,
                     batch_size=1, seq_len=16)
    with pytest.raises(ConfigError):
        batch(batch_size=0)


def test_heldout_batches_deterministic() -> None:
    a = heldout_batches(TOKENS, n_batches=3, batch_size=2, seq_len=8)
    b = heldout_batches(TOKENS, n_batches=3, batch_size=2, seq_len=8)
    assert len(a) == 3
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])
    assert a[0].shape == (2, 9)


def test_offsets_are_pinned_to_sha256_not_a_library_rng() -> None:
    # a validator on another numpy version must recompute the same assignment
    from node.engine.data import sample_offsets

    expected = int.from_bytes(
        hashlib.sha256((12345).to_bytes(8, "big") + (0).to_bytes(4, "big")).digest()[:8], "big"
    ) % 1000
    offsets = sample_offsets(12345, 3, 1000)
    assert offsets[0] == expected
    assert ((offsets >= 0) & (offsets < 1000)).all()
