"""Prepared token shards: round trip, integrity checks, manifest validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from node.engine.data import DOC_SEPARATOR, path_in_heldout
from node.engine.shards import MANIFEST_NAME, ShardManifest, load_shards, prepare_shards
from node.errors import DataError


def make_inputs(root: Path, n: int = 40) -> dict[str, bytes]:
    """Files under root/docs keyed by their path relative to root/docs."""
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    files = {}
    for i in range(n):
        rel = f"sub/f{i:02d}.txt" if i % 3 else f"f{i:02d}.md"
        data = f"document {i}: ".encode() + bytes(range(32, 32 + i)) + "é✓".encode()
        (docs / rel).write_bytes(data)
        files[rel] = data
    (docs / "ignored.bin").write_bytes(b"\x00" * 100)
    return files


def expected(files: dict[str, bytes], held: bool) -> np.ndarray:
    data = b"".join(files[rel] + DOC_SEPARATOR for rel in sorted(files)
                    if path_in_heldout(rel, 0.2) == held)
    return np.frombuffer(data, dtype=np.uint8)


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    files = make_inputs(tmp_path)
    out = tmp_path / "shards"
    prepare_shards([tmp_path / "docs"], out, shard_tokens=700, heldout_fraction=0.2)
    return out, files


def test_round_trip(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, files = prepared
    corpus = load_shards(out)
    assert corpus.vocab_size == 256
    assert corpus.train.dtype == np.uint16
    np.testing.assert_array_equal(corpus.train, expected(files, held=False))
    np.testing.assert_array_equal(corpus.heldout, expected(files, held=True))
    assert corpus.heldout.size > 0


def test_manifest_contents(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, files = prepared
    body = json.loads((out / MANIFEST_NAME).read_text())
    assert body["format"] == "gradmesh-shards"
    assert body["version"] == 1
    assert body["tokenizer"] == "bytes"
    assert body["dtype"] == "<u2"
    assert body["sources"] == len(files)
    train = [s for s in body["shards"] if s["split"] == "train"]
    assert len(train) > 1  # shard_tokens=700 forces several train shards
    assert all(s["tokens"] == 700 for s in train[:-1])
    assert [s["file"] for s in train] == [f"train-{i:05d}.bin" for i in range(len(train))]
    assert not list(out.glob("*.tmp"))


def test_single_file_input_and_progress(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text("hello shards")
    calls: list[tuple[int, int]] = []
    prepare_shards([path], tmp_path / "out", heldout_fraction=0.01,
                   progress=lambda done, total: calls.append((done, total)))
    corpus = load_shards(tmp_path / "out")
    assert bytes(corpus.train.astype(np.uint8)) == b"hello shards" + DOC_SEPARATOR
    assert corpus.heldout.size == 0
    assert calls == [(1, 1)]


def test_reprepare_removes_stale_shards(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, _ = prepared
    before = len(list(out.glob("train-*.bin")))
    prepare_shards([out.parent / "docs"], out, shard_tokens=10**6, heldout_fraction=0.2)
    assert before > 1
    assert len(list(out.glob("train-*.bin"))) == 1
    load_shards(out)


def test_corrupt_shard_byte_named(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, _ = prepared
    shard = out / "train-00001.bin"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0x01
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train-00001\.bin"):
        load_shards(out)
    load_shards(out, verify=False)  # size still matches: only the hash catches it


def test_truncated_and_missing_shard(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, _ = prepared
    shard = out / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"train-00000\.bin"):
        load_shards(out, verify=False)
    shard.unlink()
    with pytest.raises(DataError, match="missing"):
        load_shards(out)


def test_token_out_of_vocab(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, _ = prepared
    body = json.loads((out / MANIFEST_NAME).read_text())
    body["vocab_size"] = 40  # the inputs contain bytes >= 40
    (out / MANIFEST_NAME).write_text(json.dumps(body))
    with pytest.raises(DataError, match="vocab"):
        load_shards(out)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: "not json {",
        lambda b: json.dumps([1, 2]),
        lambda b: json.dumps({**b, "version": 2}),
        lambda b: json.dumps({**b, "format": "other"}),
        lambda b: json.dumps({**b, "vocab_size": "256"}),
        lambda b: json.dumps({**b, "shards": {}}),
        lambda b: json.dumps({**b, "shards": [{"file": "../x.bin"}]}),
        lambda b: json.dumps({**b, "shards": [{**b["shards"][0], "file": "../train-00000.bin"}]}),
        lambda b: json.dumps({**b, "shards": [{**b["shards"][0], "tokens": True}]}),
        lambda b: json.dumps({**b, "dtype": "<f4"}),
    ],
)
def test_bad_manifest(prepared: tuple[Path, dict[str, bytes]], mutate: object) -> None:
    out, _ = prepared
    body = json.loads((out / MANIFEST_NAME).read_text())
    (out / MANIFEST_NAME).write_text(mutate(body))  # type: ignore[operator]
    with pytest.raises(DataError, match=MANIFEST_NAME):
        load_shards(out)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=MANIFEST_NAME):
        load_shards(tmp_path)


def test_manifest_json_round_trip(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, _ = prepared
    manifest = ShardManifest.from_json((out / MANIFEST_NAME).read_text())
    assert ShardManifest.from_json(manifest.to_json()) == manifest


def test_empty_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        prepare_shards([tmp_path / "empty"], tmp_path / "out")
    (tmp_path / "empty" / "blank.txt").write_bytes(b"")
    with pytest.raises(DataError):
        prepare_shards([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(DataError):
        prepare_shards([tmp_path / "nope"], tmp_path / "out")
