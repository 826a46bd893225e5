"""Prepared token shards: inputs (text, .jsonl, .parquet), tokenizers, determinism across
worker counts, the manifest and its hash, integrity checks and verification."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from node.engine.data import DOC_SEPARATOR, stdlib_files
from node.engine.documents import BadRecordError, read_documents
from node.engine.prepare import PrepareProgress, document_in_heldout, prepare_shards
from node.engine.shards import (
    MANIFEST_NAME,
    ShardManifest,
    ShardVerificationError,
    canonical_sha256,
    load_shards,
    token_dtype,
    verify_shards,
)
from node.engine.tokenizer import BYTE_TOKENIZER_SHA256, BPETokenizer, train_bpe
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
                    if document_in_heldout(files[rel].decode(), 0.2) == held)
    return np.frombuffer(data, dtype=np.uint8)


def rewrite_manifest(out: Path, edit: Any) -> None:
    """Edit the manifest body and re-seal it with a correct manifest_sha256."""
    body = json.loads((out / MANIFEST_NAME).read_text())
    del body["manifest_sha256"]
    edit(body)
    body["manifest_sha256"] = canonical_sha256(body)
    (out / MANIFEST_NAME).write_text(json.dumps(body))


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    files = make_inputs(tmp_path)
    out = tmp_path / "shards"
    prepare_shards([tmp_path / "docs"], out, shard_tokens=700, heldout_fraction=0.2)
    return out, files


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> BPETokenizer:
    tmp = tmp_path_factory.mktemp("bpe")
    files, used = [], 0
    for rel, path in stdlib_files():
        if used > 200_000:
            break
        target = tmp / rel.replace("/", "_")
        target.write_bytes(path.read_bytes())
        files.append(target)
        used += len(target.read_bytes())
    return train_bpe(files, 800, tmp / "tokenizer.json")


def documents(n: int = 60) -> list[str]:
    return [f"doc {i}: " + f"def f(x):\n    return x * {i}\n" * (1 + i % 7) for i in range(n)]


def write_jsonl(path: Path, texts: Sequence[str | None], extra: Mapping[int, str] = {}) -> None:
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)]
    for at, line in sorted(extra.items()):
        lines.insert(at, line)
    path.write_text("\n".join(lines) + "\n")


class FakeWideTokenizer:
    """A protocol implementation with more than 65536 ids: bytes shifted up by 65536."""

    vocab_size = 70_000
    eot_id = 69_999
    document_end = (69_999,)
    special_ids: Mapping[str, int] = {"<eot>": 69_999}
    sha256 = hashlib.sha256(b"fake-wide").hexdigest()

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint32) + 65536

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Any) -> str:
        return bytes((np.asarray(ids) - 65536).astype(np.uint8)).decode()


# --- the byte tokenizer over text files (the original format) -------------------------------------
def test_round_trip(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, files = prepared
    corpus = load_shards(out)
    assert corpus.vocab_size == 256
    assert corpus.train.dtype == np.uint16
    np.testing.assert_array_equal(corpus.train, expected(files, held=False))
    np.testing.assert_array_equal(corpus.heldout, expected(files, held=True))
    assert corpus.heldout.size > 0
    assert corpus.tokenizer_sha256 == BYTE_TOKENIZER_SHA256
    assert corpus.manifest_sha256 == json.loads((out / MANIFEST_NAME).read_text())[
        "manifest_sha256"]


def test_manifest_contents(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, files = prepared
    body = json.loads((out / MANIFEST_NAME).read_text())
    assert body["format"] == "gradmesh-shards"
    assert body["version"] == 2
    assert body["tokenizer"] == {"sha256": BYTE_TOKENIZER_SHA256, "vocab_size": 256,
                                 "eot_id": 10, "document_end": [10, 10]}
    assert body["dtype"] == "<u2"
    assert body["sources"] == len(files)
    assert body["split"] == {"rule": "content-sha256", "heldout_fraction": 0.2}
    assert body["skipped"] == {"empty": 0, "bad_records": 0}
    held = sum(document_in_heldout(d.decode(), 0.2) for d in files.values())
    assert body["splits"]["heldout"]["documents"] == held
    assert body["splits"]["train"]["documents"] == len(files) - held
    train = [s for s in body["shards"] if s["split"] == "train"]
    assert body["splits"]["train"]["tokens"] == sum(s["tokens"] for s in train)
    assert body["splits"]["train"]["shards"] == len(train) > 1  # shard_tokens=700
    assert all(s["tokens"] == 700 for s in train[:-1])
    assert [s["file"] for s in train] == [f"train-{i:05d}.bin" for i in range(len(train))]
    for shard in body["shards"]:
        assert hashlib.sha256((out / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
    recorded = body.pop("manifest_sha256")
    assert recorded == hashlib.sha256(json.dumps(
        body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert not list(out.glob("*.tmp"))


def test_single_file_input_and_progress(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text("hello shards")
    calls: list[PrepareProgress] = []
    prepare_shards([path], tmp_path / "out", heldout_fraction=0.01, progress=calls.append)
    corpus = load_shards(tmp_path / "out")
    assert bytes(corpus.train.astype(np.uint8)) == b"hello shards" + DOC_SEPARATOR
    assert corpus.heldout.size == 0
    assert calls[-1] == PrepareProgress(12, 12, 1, 14)
    assert [c.bytes_done for c in calls] == sorted(c.bytes_done for c in calls)


def test_output_inside_an_input_folder_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    first = prepare_shards([tmp_path], tmp_path / "shards", heldout_fraction=0.01)
    again = prepare_shards([tmp_path], tmp_path / "shards", heldout_fraction=0.01)
    assert first.sources == again.sources == 1
    assert first.manifest_sha256 == again.manifest_sha256


def test_reprepare_removes_stale_shards(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, _ = prepared
    before = len(list(out.glob("train-*.bin")))
    prepare_shards([out.parent / "docs"], out, shard_tokens=10**6, heldout_fraction=0.2)
    assert before > 1
    assert len(list(out.glob("train-*.bin"))) == 1
    load_shards(out)


# --- .jsonl and .parquet --------------------------------------------------------------------------
def test_jsonl_one_document_per_line(tmp_path: Path) -> None:
    texts = documents(30)
    write_jsonl(tmp_path / "d.jsonl", [*texts, None, ""], extra={5: "", 9: "   "})
    manifest = prepare_shards([tmp_path / "d.jsonl"], tmp_path / "out", heldout_fraction=0.1)
    assert manifest.documents == 30
    assert manifest.skipped_empty == 2  # the null and the empty text; blank lines are not records
    corpus = load_shards(tmp_path / "out")
    train = [t for t in texts if not document_in_heldout(t, 0.1)]
    assert bytes(corpus.train.astype(np.uint8)).decode() == "".join(t + "\n\n" for t in train)
    assert list(read_documents(tmp_path / "d.jsonl")) == texts


def test_jsonl_bad_line_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    for bad in ("{not json", "[1, 2]", json.dumps({"body": "x"}), json.dumps({"text": 3})):
        write_jsonl(path, documents(10), extra={4: bad})
        with pytest.raises(BadRecordError, match=r"d\.jsonl:5\b"):
            prepare_shards([path], tmp_path / "out")
    manifest = prepare_shards([path], tmp_path / "out", skip_bad_records=True)
    assert (manifest.documents, manifest.skipped_bad_records) == (10, 1)
    assert issubclass(BadRecordError, DataError)


def test_jsonl_other_field_and_lone_surrogates(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"content": "ok \\ud800 then"}\n{"content": "second"}\n')
    prepare_shards([path], tmp_path / "out", text_field="content", heldout_fraction=0.01)
    text = bytes(load_shards(tmp_path / "out").train.astype(np.uint8)).decode()
    assert text == "ok ? then\n\nsecond\n\n"


def test_parquet_one_document_per_row(tmp_path: Path, bpe: BPETokenizer) -> None:
    texts = documents(40)
    pq.write_table(pa.table({"text": [*texts[:20], None, *texts[20:]],
                             "n": list(range(41))}), tmp_path / "d.parquet", row_group_size=8)
    write_jsonl(tmp_path / "d.jsonl", texts)
    from_parquet = prepare_shards([tmp_path / "d.parquet"], tmp_path / "p", tokenizer=bpe)
    from_jsonl = prepare_shards([tmp_path / "d.jsonl"], tmp_path / "j", tokenizer=bpe)
    assert from_parquet.documents == 40
    assert from_parquet.skipped_empty == 1
    assert from_parquet.train == from_jsonl.train
    assert [s.sha256 for s in from_parquet.shards] == [s.sha256 for s in from_jsonl.shards]
    assert list(read_documents(tmp_path / "d.parquet")) == texts


def test_parquet_without_a_text_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "a.parquet")
    with pytest.raises(BadRecordError, match=r"a\.parquet.*no column 'text'"):
        prepare_shards([tmp_path / "a.parquet"], tmp_path / "out")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "b.parquet")
    with pytest.raises(BadRecordError, match=r"b\.parquet.*not a string"):
        prepare_shards([tmp_path / "b.parquet"], tmp_path / "out")
    (tmp_path / "c.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"c\.parquet"):
        prepare_shards([tmp_path / "c.parquet"], tmp_path / "out")


# --- tokenizers, end of text, dtype ---------------------------------------------------------------
def test_eot_separates_documents(tmp_path: Path, bpe: BPETokenizer) -> None:
    texts = documents(25)
    write_jsonl(tmp_path / "d.jsonl", texts)
    manifest = prepare_shards([tmp_path / "d.jsonl"], tmp_path / "out", tokenizer=bpe,
                              heldout_fraction=0.2, shard_tokens=300)
    assert manifest.tokenizer.sha256 == bpe.sha256
    assert manifest.tokenizer.eot_id == bpe.eot_id
    corpus = load_shards(tmp_path / "out")
    assert corpus.tokenizer_sha256 == bpe.sha256
    for split, tokens in (("train", corpus.train), ("heldout", corpus.heldout)):
        want = [t for t in texts if document_in_heldout(t, 0.2) == (split == "heldout")]
        assert want
        assert tokens[-1] == bpe.eot_id
        pieces = np.split(tokens, np.flatnonzero(tokens == bpe.eot_id) + 1)[:-1]
        assert [bpe.decode(p[:-1]) for p in pieces] == want
        assert manifest.split(split).documents == len(want)


def test_wide_vocabulary_gives_uint32_shards(tmp_path: Path) -> None:
    assert token_dtype(65536) == "<u2"
    assert token_dtype(65537) == "<u4"
    texts = documents(10)
    write_jsonl(tmp_path / "d.jsonl", texts)
    tok = FakeWideTokenizer()
    manifest = prepare_shards([tmp_path / "d.jsonl"], tmp_path / "out", tokenizer=tok,
                              heldout_fraction=0.01)
    assert manifest.dtype == "<u4"
    corpus = load_shards(tmp_path / "out")
    assert corpus.train.dtype == np.uint32
    assert corpus.vocab_size == 70_000
    assert int(corpus.train.max()) == tok.eot_id
    assert tok.decode(corpus.train[: np.argmax(corpus.train == tok.eot_id)]) == texts[0]
    verify_shards(tmp_path / "out")


def test_tokenizer_ids_outside_its_vocabulary_are_refused(tmp_path: Path) -> None:
    class Narrow(FakeWideTokenizer):
        """Claims 100 ids but encodes raw bytes: 'z' is 122."""

        vocab_size = 100
        eot_id = 99
        document_end = (99,)

        def encode(self, text: str) -> np.ndarray:
            return np.frombuffer(text.encode(), dtype=np.uint8).copy()

    (tmp_path / "a.txt").write_text("ABC")
    prepare_shards([tmp_path / "a.txt"], tmp_path / "ok", tokenizer=Narrow(),
                   heldout_fraction=0.01)
    (tmp_path / "a.txt").write_text("xyz")
    with pytest.raises(DataError, match="outside"):
        prepare_shards([tmp_path / "a.txt"], tmp_path / "bad", tokenizer=Narrow(),
                       heldout_fraction=0.01)


# --- determinism ----------------------------------------------------------------------------------
def test_manifest_hash_is_deterministic_across_worker_counts(tmp_path: Path,
                                                              bpe: BPETokenizer) -> None:
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", documents(200))
    (tmp_path / "in" / "b.md").write_text("# notes\n\n" + "some markdown text " * 200)
    pq.write_table(pa.table({"text": documents(50)[::-1]}), tmp_path / "in" / "c.parquet")
    kwargs: dict[str, Any] = {"tokenizer": bpe, "heldout_fraction": 0.1, "shard_tokens": 2000}
    one = prepare_shards([tmp_path / "in"], tmp_path / "w1", workers=1, **kwargs)
    again = prepare_shards([tmp_path / "in"], tmp_path / "elsewhere" / "w1", workers=1, **kwargs)
    two = prepare_shards([tmp_path / "in"], tmp_path / "w2", workers=2, **kwargs)
    assert one.manifest_sha256 == again.manifest_sha256 == two.manifest_sha256
    assert one == two
    assert (tmp_path / "w1" / MANIFEST_NAME).read_bytes() == (
        tmp_path / "w2" / MANIFEST_NAME).read_bytes()
    assert len(one.shards) > 4
    assert one.sources == 3
    assert one.documents == 200 + 1 + 50
    other = prepare_shards([tmp_path / "in"], tmp_path / "w3", workers=1,
                           **{**kwargs, "heldout_fraction": 0.2})
    assert other.manifest_sha256 != one.manifest_sha256


# --- integrity: load and verify -------------------------------------------------------------------
def test_corrupt_shard_byte_named(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, _ = prepared
    shard = out / "train-00001.bin"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0x01
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train-00001\.bin"):
        load_shards(out)
    load_shards(out, verify=False)  # size still matches: only the hash catches it
    with pytest.raises(ShardVerificationError, match=r"train-00001\.bin") as caught:
        verify_shards(out)
    assert len(caught.value.problems) == 1
    assert "sha256" in caught.value.problems[0]


def test_verify_passes_and_reports_every_problem(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, _ = prepared
    manifest = verify_shards(out)
    assert manifest.manifest_sha256 == load_shards(out).manifest_sha256
    (out / "train-00000.bin").unlink()
    held = out / "heldout-00000.bin"
    held.write_bytes(held.read_bytes()[:-2])
    with pytest.raises(ShardVerificationError) as caught:
        verify_shards(out)
    problems = caught.value.problems
    assert len(problems) == 2
    assert "train-00000.bin is missing" in problems[0]
    assert "heldout-00000.bin" in problems[1]


def test_verify_detects_an_edited_manifest(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, _ = prepared
    body = json.loads((out / MANIFEST_NAME).read_text())
    body["splits"]["train"]["documents"] += 1  # shards untouched, hash left as it was
    (out / MANIFEST_NAME).write_text(json.dumps(body))
    with pytest.raises(ShardVerificationError, match="manifest_sha256") as caught:
        verify_shards(out)
    assert len(caught.value.problems) == 1
    with pytest.raises(DataError, match="manifest_sha256"):
        load_shards(out, verify=False)  # the manifest's own hash is always checked


def test_resealed_manifest_with_wrong_totals(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, _ = prepared
    rewrite_manifest(out, lambda b: b["splits"]["train"].update(tokens=1))
    with pytest.raises(ShardVerificationError, match="totals"):
        verify_shards(out)
    with pytest.raises(DataError, match="totals"):
        load_shards(out)


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
    rewrite_manifest(out, lambda b: b["tokenizer"].update(vocab_size=40))  # inputs hold bytes >= 40
    with pytest.raises(DataError, match="vocab"):
        load_shards(out)
    with pytest.raises(ShardVerificationError, match="vocab"):
        verify_shards(out)


def test_version_1_manifest_is_refused_clearly(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, _ = prepared
    v1 = {"format": "gradmesh-shards", "version": 1, "vocab_size": 256, "dtype": "<u2",
          "sources": 1, "tokenizer": "bytes", "shards": []}
    (out / MANIFEST_NAME).write_text(json.dumps(v1))
    with pytest.raises(DataError, match=r"version 1.*gradmesh data prepare"):
        load_shards(out)
    with pytest.raises(ShardVerificationError, match="version 1"):
        verify_shards(out)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: "not json {",
        lambda b: json.dumps([1, 2]),
        lambda b: json.dumps({**b, "version": 3}),
        lambda b: json.dumps({**b, "format": "other"}),
        lambda b: json.dumps({**b, "tokenizer": {**b["tokenizer"], "vocab_size": "256"}}),
        lambda b: json.dumps({**b, "tokenizer": {**b["tokenizer"], "sha256": "x"}}),
        lambda b: json.dumps({**b, "tokenizer": {**b["tokenizer"], "eot_id": 300}}),
        lambda b: json.dumps({**b, "split": {**b["split"], "rule": "path"}}),
        lambda b: json.dumps({**b, "shards": {}}),
        lambda b: json.dumps({**b, "shards": [{"file": "../x.bin"}]}),
        lambda b: json.dumps({**b, "shards": [{**b["shards"][0], "file": "../train-00000.bin"}]}),
        lambda b: json.dumps({**b, "shards": [{**b["shards"][0], "tokens": True}]}),
        lambda b: json.dumps({**b, "dtype": "<f4"}),
        lambda b: json.dumps({**b, "dtype": "<u4"}),  # wider than the vocabulary needs
        lambda b: json.dumps({k: v for k, v in b.items() if k != "manifest_sha256"}),
        lambda b: json.dumps({**b, "sources": -1}),
    ],
)
def test_bad_manifest(prepared: tuple[Path, dict[str, bytes]], mutate: Any) -> None:
    out, _ = prepared
    body = json.loads((out / MANIFEST_NAME).read_text())
    (out / MANIFEST_NAME).write_text(mutate(body))
    with pytest.raises(DataError, match=MANIFEST_NAME):
        load_shards(out)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=MANIFEST_NAME):
        load_shards(tmp_path)
    with pytest.raises(ShardVerificationError, match=MANIFEST_NAME):
        verify_shards(tmp_path)


def test_manifest_json_round_trip(prepared: tuple[Path, dict[str, bytes]]) -> None:
    out, _ = prepared
    manifest = ShardManifest.from_json((out / MANIFEST_NAME).read_text())
    assert ShardManifest.from_json(manifest.to_json()) == manifest
    assert manifest.to_json() == (out / MANIFEST_NAME).read_text()


def test_empty_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        prepare_shards([tmp_path / "empty"], tmp_path / "out")
    (tmp_path / "empty" / "blank.txt").write_bytes(b"")
    with pytest.raises(DataError, match="1 empty"):
        prepare_shards([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(DataError):
        prepare_shards([tmp_path / "nope"], tmp_path / "out")
