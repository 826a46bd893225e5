"""Tokenizers: the byte tokenizer's contract, BPE loading, deterministic BPE training."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from node.engine import data
from node.engine.data import stdlib_files
from node.engine.tokenizer import (
    BYTE_TOKENIZER_SHA256,
    EOT_TOKEN,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    TokenizerFileError,
    load_tokenizer,
    token_dtype,
    train_bpe,
)
from node.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
TEXT = "def héllo(wörld):\n    return 'fox ✓'  # the quick brown fox\n"


def corpus_files(tmp_path: Path, budget: int = 300_000) -> list[Path]:
    """Copies of stdlib sources, about `budget` bytes (copies: the stdlib may change)."""
    out, used = [], 0
    for rel, path in stdlib_files():
        if used >= budget:
            break
        target = tmp_path / "corpus" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        out.append(target)
        used += target.stat().st_size
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], BPETokenizer]:
    tmp = tmp_path_factory.mktemp("bpe")
    files = corpus_files(tmp)
    return files, train_bpe(files, 1000, tmp / "tokenizer.json")


# --- the byte tokenizer ---------------------------------------------------------------------------
def test_byte_tokenizer_contract() -> None:
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert data.ByteTokenizer is ByteTokenizer  # still importable from its old home
    assert tok.sha256 == BYTE_TOKENIZER_SHA256
    assert tok.sha256 == hashlib.sha256(b"gradmesh-byte-tokenizer-v1").hexdigest()
    assert tok.vocab_size == 256
    # backwards compatible: documents end with b"\n\n", the last of which is eot_id
    assert tok.document_end == tuple(data.DOC_SEPARATOR) == (10, 10)
    assert tok.eot_id == tok.document_end[-1] == 10
    assert dict(tok.special_ids) == {}
    batch = tok.encode_batch([TEXT, ""])
    assert bytes(batch[0]) == TEXT.encode("utf-8")
    assert batch[1].size == 0
    assert tok.decode(batch[0]) == TEXT
    assert load_tokenizer(None).sha256 == BYTE_TOKENIZER_SHA256


def test_token_dtype_boundaries() -> None:
    assert token_dtype(256) == np.uint16
    assert token_dtype(65536) == np.uint16  # ids 0..65535 fit
    assert token_dtype(65537) == np.uint32
    with pytest.raises(ConfigError):
        token_dtype(0)


# --- BPE ------------------------------------------------------------------------------------------
def test_bpe_round_trip_and_protocol(trained: tuple[list[Path], BPETokenizer]) -> None:
    _, tok = trained
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 1000
    assert tok.eot_id == tok.special_ids[EOT_TOKEN] == 0  # the special token comes first
    assert tok.document_end == (tok.eot_id,)
    ids = tok.encode(TEXT)
    assert ids.dtype == np.uint16
    assert ids.size < len(TEXT.encode("utf-8"))  # merges learned from Python sources
    assert tok.eot_id not in ids  # no special tokens added by encode
    assert tok.decode(ids) == TEXT
    assert tok.decode(torch.from_numpy(ids.astype(np.int64))) == TEXT
    assert tok.decode([tok.eot_id]) == EOT_TOKEN
    batch = tok.encode_batch([TEXT, "x", ""])
    assert [b.tolist() for b in batch] == [tok.encode(t).tolist() for t in (TEXT, "x", "")]
    with pytest.raises(DataError):
        tok.decode([tok.vocab_size])


def test_bpe_sha256_is_of_the_file_and_survives_pickling(
        trained: tuple[list[Path], BPETokenizer]) -> None:
    _, tok = trained
    path = Path(tok._source)
    assert tok.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_tokenizer(path)
    assert loaded.sha256 == tok.sha256
    assert loaded.encode(TEXT).tolist() == tok.encode(TEXT).tolist()
    again = pickle.loads(pickle.dumps(tok))
    assert again.sha256 == tok.sha256
    assert again.eot_id == tok.eot_id
    assert again.encode(TEXT).tolist() == tok.encode(TEXT).tolist()


def test_training_is_deterministic(tmp_path: Path,
                                   trained: tuple[list[Path], BPETokenizer]) -> None:
    files, first = trained
    # input order does not matter (sorted), nor does the thread count of tokenizers' trainer
    second = train_bpe(list(reversed(files)) + files[:3], 1000, tmp_path / "again.json")
    assert second.sha256 == first.sha256
    assert (tmp_path / "again.json").read_bytes() == Path(first._source).read_bytes()
    script = ("import sys; from pathlib import Path; from node.engine.tokenizer import train_bpe;"
              "print(train_bpe([Path(p) for p in sys.argv[2:]], 1000, sys.argv[1]).sha256)")
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "one-thread.json"), *map(str, files)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "RAYON_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == first.sha256


def test_training_refuses_bad_arguments(tmp_path: Path) -> None:
    doc = tmp_path / "a.txt"
    doc.write_text("hello hello hello")
    with pytest.raises(ConfigError, match="vocab_size"):
        train_bpe([doc], 256, tmp_path / "t.json")
    with pytest.raises(DataError):
        train_bpe([], 1000, tmp_path / "t.json")
    with pytest.raises(DataError, match="not a file"):
        train_bpe([tmp_path / "missing.txt"], 1000, tmp_path / "t.json")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="no text"):
        train_bpe([tmp_path / "empty.txt"], 1000, tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


def test_from_file_refuses_missing_invalid_and_eot_less_files(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    missing = tmp_path / "nope.json"
    with pytest.raises(TokenizerFileError, match=str(missing)):
        BPETokenizer.from_file(missing)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"model": "not a tokenizer"}))
    with pytest.raises(TokenizerFileError, match=str(broken)):
        load_tokenizer(broken)
    plain = tmp_path / "plain.json"
    plain.write_text(HFTokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[])).to_str())
    with pytest.raises(TokenizerFileError, match="end-of-text"):
        BPETokenizer.from_file(plain)
    with pytest.raises(TokenizerFileError, match="'c'"):
        BPETokenizer.from_file(plain, eot_token="c")
    named = BPETokenizer.from_file(plain, eot_token="b")
    assert (named.eot_id, named.vocab_size, named.eot_token) == (1, 2, "b")
    assert issubclass(TokenizerFileError, DataError)
