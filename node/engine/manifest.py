"""The shard directory's manifest: its format, dataclasses, canonical hash, parsing and checks.

This module owns what `manifest.json` says and how it is read: the format's
constants and shard file names, the dataclasses (`ShardManifest`, `ShardInfo`,
`SplitStats`, `TokenizerInfo`), their JSON and canonical hash, the token dtype
for a vocabulary, and parsing and checking a manifest's fields, hash and
totals. It touches no files: `node.engine.shards` reads manifests and shards
from disk (loading, verifying), `node.engine.prepare` writes them.

Layout of a shard directory: `train-00000.bin`, ..., `heldout-00000.bin`, ...
(raw little-endian token arrays: uint16 when the vocabulary has at most 65536
ids, else uint32) and `manifest.json` (format version 2):

    format, version        "gradmesh-shards", 2
    dtype                  "<u2" or "<u4"
    tokenizer              {sha256, vocab_size, eot_id, document_end}
    split                  {rule: "content-sha256", heldout_fraction}
    shard_tokens           tokens per full shard
    text_field             the .jsonl key / .parquet column documents were read from
    sources                input files read
    skipped                {empty, bad_records}: documents left out
    splits                 {train, heldout}: {documents, tokens, shards}
    shards                 [{file, split, tokens, sha256}], train first, in order
    manifest_sha256        sha256 of the canonical JSON of everything above

The canonical JSON is `json.dumps(body, sort_keys=True, separators=(",", ":"))`
of the manifest without `manifest_sha256`; it holds no paths, times or worker
counts, so preparing the same inputs with the same tokenizer and settings gives
the same manifest hash on any machine.

Version 1 manifests (byte tokenizer, split by file path, no manifest hash) are
refused with a message to prepare the data again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from node.engine.tokenizer import Tokenizer
from node.engine.tokenizer import token_dtype as _numpy_token_dtype
from node.errors import DataError

FORMAT = "gradmesh-shards"
VERSION = 2
MANIFEST_NAME = "manifest.json"
SPLIT_RULE = "content-sha256"
SPLITS = ("train", "heldout")
_SHARD_NAME = re.compile(r"^(train|heldout)-\d{5,}\.bin$")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def token_dtype(vocab_size: int) -> str:
    """Little-endian dtype name for a vocabulary: "<u2" up to 65536 ids, else "<u4"."""
    return _numpy_token_dtype(vocab_size).newbyteorder("<").str


def shard_file(split: str, index: int) -> str:
    """The file name of a split's shard number `index`: "train-00000.bin", ..."""
    return f"{split}-{index:05d}.bin"


def is_shard_file(name: str) -> bool:
    """Whether a file name is one a shard directory's shards may have."""
    return _SHARD_NAME.match(name) is not None


# --- the manifest ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardInfo:
    file: str
    split: str
    tokens: int
    sha256: str


@dataclass(frozen=True)
class SplitStats:
    documents: int
    tokens: int
    shards: int


@dataclass(frozen=True)
class TokenizerInfo:
    sha256: str
    vocab_size: int
    eot_id: int
    document_end: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> TokenizerInfo:
        return cls(sha256=tokenizer.sha256, vocab_size=int(tokenizer.vocab_size),
                   eot_id=int(tokenizer.eot_id),
                   document_end=tuple(int(i) for i in tokenizer.document_end))


@dataclass(frozen=True)
class ShardManifest:
    tokenizer: TokenizerInfo
    dtype: str
    shards: tuple[ShardInfo, ...]
    train: SplitStats
    heldout: SplitStats
    sources: int
    heldout_fraction: float
    shard_tokens: int
    text_field: str = "text"
    skipped_empty: int = 0
    skipped_bad_records: int = 0
    format: str = FORMAT
    version: int = VERSION

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def documents(self) -> int:
        return self.train.documents + self.heldout.documents

    @property
    def tokens(self) -> int:
        return self.train.tokens + self.heldout.tokens

    def split(self, name: str) -> SplitStats:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}")
        stats: SplitStats = getattr(self, name)
        return stats

    def body(self) -> dict[str, Any]:
        """The manifest's content without its hash (what `manifest_sha256` covers)."""
        tok = self.tokenizer
        return {
            "format": self.format, "version": self.version, "dtype": self.dtype,
            "tokenizer": {"sha256": tok.sha256, "vocab_size": tok.vocab_size,
                          "eot_id": tok.eot_id, "document_end": list(tok.document_end)},
            "split": {"rule": SPLIT_RULE, "heldout_fraction": self.heldout_fraction},
            "shard_tokens": self.shard_tokens, "text_field": self.text_field,
            "sources": self.sources,
            "skipped": {"empty": self.skipped_empty, "bad_records": self.skipped_bad_records},
            "splits": {s: {"documents": self.split(s).documents, "tokens": self.split(s).tokens,
                           "shards": self.split(s).shards} for s in SPLITS},
            "shards": [{"file": s.file, "split": s.split, "tokens": s.tokens,
                        "sha256": s.sha256} for s in self.shards],
        }  # fmt: skip

    @property
    def manifest_sha256(self) -> str:
        return canonical_sha256(self.body())

    def to_json(self) -> str:
        body = self.body()
        body["manifest_sha256"] = canonical_sha256(body)
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardManifest:
        """Parse and check a manifest: its fields, its hash and its per-split totals."""
        manifest, recorded = parse_manifest(text)
        problems = manifest_problems(manifest, recorded)
        if problems:
            raise DataError(problems[0])
        return manifest

    def consistency_problems(self) -> list[str]:
        """Per-split totals and shard names that disagree with the shard list."""
        problems = []
        for name in SPLITS:
            shards = [s for s in self.shards if s.split == name]
            stats = self.split(name)
            if stats.shards != len(shards) or stats.tokens != sum(s.tokens for s in shards):
                problems.append(f"{MANIFEST_NAME}: split {name!r} totals ({stats.shards} shards, "
                                f"{stats.tokens} tokens) disagree with its shard list")
            if [s.file for s in shards] != [shard_file(name, i) for i in range(len(shards))]:
                problems.append(f"{MANIFEST_NAME}: {name} shards are not numbered 0..n-1")
        if self.tokens and self.documents <= 0:
            problems.append(f"{MANIFEST_NAME}: tokens without documents")
        return problems


def canonical_sha256(body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def manifest_problems(manifest: ShardManifest, recorded: str) -> list[str]:
    """A hash that does not match the content, then the consistency problems."""
    problems = []
    if recorded != manifest.manifest_sha256:
        problems.append(f"{MANIFEST_NAME}: manifest_sha256 does not match its content "
                        f"(edited after it was written?)")
    return problems + manifest.consistency_problems()


# --- parsing the manifest (each check in the order a reader meets the fields) ---------------------
def parse_manifest(text: str | bytes) -> tuple[ShardManifest, str]:
    """(manifest, its recorded manifest_sha256), every field type-checked."""
    body = _json_object(text)
    _check_format(body)
    tokenizer = _parse_tokenizer(_field(body, "tokenizer", dict))
    fraction = _parse_heldout_fraction(_field(body, "split", dict))
    manifest = _build_manifest(body, tokenizer, fraction)
    _check_vocabulary(manifest)
    recorded = _field(body, "manifest_sha256", str)
    return manifest, recorded


def _json_object(text: str | bytes) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise DataError(f"{MANIFEST_NAME}: top level must be an object")
    return body


def _check_format(body: dict[str, Any]) -> None:
    """The format name, and a version this build reads (version 1 with its own message)."""
    if body.get("format") != FORMAT:
        raise DataError(f"{MANIFEST_NAME}: format {body.get('format')!r} != {FORMAT!r}")
    if body.get("version") == 1:
        raise DataError(f"{MANIFEST_NAME}: version 1 (written before BPE tokenizers and "
                        f"manifest hashes) is no longer read; prepare the data again with "
                        f"`gradmesh data prepare`")
    if body.get("version") != VERSION:
        raise DataError(f"{MANIFEST_NAME}: unsupported version {body.get('version')!r} "
                        f"(this build reads version {VERSION})")


def _parse_tokenizer(tok: dict[str, Any]) -> TokenizerInfo:
    end = _field(tok, "document_end", list)
    if not end or not all(isinstance(i, int) and not isinstance(i, bool) for i in end):
        raise DataError(f"{MANIFEST_NAME}: tokenizer.document_end must be a list of ids")
    tokenizer = TokenizerInfo(sha256=_field(tok, "sha256", str),
                              vocab_size=_field(tok, "vocab_size", int),
                              eot_id=_field(tok, "eot_id", int), document_end=tuple(end))
    if not _HEX64.fullmatch(tokenizer.sha256):
        raise DataError(f"{MANIFEST_NAME}: tokenizer.sha256 is not a sha256")
    return tokenizer


def _parse_heldout_fraction(split: dict[str, Any]) -> float:
    """The `split` object's fraction, once its rule is the one this build applies."""
    if split.get("rule") != SPLIT_RULE:
        raise DataError(f"{MANIFEST_NAME}: split rule {split.get('rule')!r} != {SPLIT_RULE!r}")
    fraction = split.get("heldout_fraction")
    if not isinstance(fraction, float) or not 0.0 < fraction < 1.0:
        raise DataError(f"{MANIFEST_NAME}: split.heldout_fraction must be a float in (0, 1)")
    return fraction


def _build_manifest(body: dict[str, Any], tokenizer: TokenizerInfo,
                    fraction: float) -> ShardManifest:
    """The remaining fields: counts, skipped documents, per-split totals and the shard list."""
    skipped = _field(body, "skipped", dict)
    splits = _field(body, "splits", dict)
    raw_shards = body.get("shards")
    if not isinstance(raw_shards, list):
        raise DataError(f"{MANIFEST_NAME}: 'shards' must be a list")
    return ShardManifest(
        tokenizer=tokenizer, dtype=_field(body, "dtype", str),
        shards=tuple(_shard_info(s) for s in raw_shards),
        train=_split_stats(splits, "train"), heldout=_split_stats(splits, "heldout"),
        sources=_field(body, "sources", int), heldout_fraction=fraction,
        shard_tokens=_field(body, "shard_tokens", int), text_field=_field(body, "text_field", str),
        skipped_empty=_field(skipped, "empty", int),
        skipped_bad_records=_field(skipped, "bad_records", int),
    )  # fmt: skip


def _check_vocabulary(manifest: ShardManifest) -> None:
    """The dtype fits the vocabulary, and eot_id lies in it and ends document_end."""
    tokenizer = manifest.tokenizer
    if tokenizer.vocab_size <= 0 or manifest.dtype != token_dtype(tokenizer.vocab_size):
        raise DataError(f"{MANIFEST_NAME}: bad dtype/vocab {manifest.dtype!r}/"
                        f"{tokenizer.vocab_size}")
    if (not 0 <= tokenizer.eot_id < tokenizer.vocab_size
            or tokenizer.document_end[-1] != tokenizer.eot_id):
        raise DataError(f"{MANIFEST_NAME}: eot_id {tokenizer.eot_id} outside the vocabulary "
                        f"or not the last id of document_end")


def _field(body: dict[str, Any], key: str, kind: type) -> Any:
    """body[key], which must be a `kind` (not a bool) and, if an int, not negative."""
    value: Any = body.get(key)
    # bool is an int subclass; a true/false count is still malformed.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{MANIFEST_NAME}: field {key!r} must be {kind.__name__}, got {value!r}")
    if isinstance(value, int) and value < 0:
        raise DataError(f"{MANIFEST_NAME}: field {key!r} must not be negative, got {value}")
    return value


def _split_stats(splits: dict[str, Any], name: str) -> SplitStats:
    raw = _field(splits, name, dict)
    return SplitStats(documents=_field(raw, "documents", int), tokens=_field(raw, "tokens", int),
                      shards=_field(raw, "shards", int))


def _shard_info(raw: object) -> ShardInfo:
    if not isinstance(raw, dict):
        raise DataError(f"{MANIFEST_NAME}: shard entry must be an object, got {raw!r}")
    info = ShardInfo(file=_field(raw, "file", str), split=_field(raw, "split", str),
                     tokens=_field(raw, "tokens", int), sha256=_field(raw, "sha256", str))
    if not is_shard_file(info.file) or not info.file.startswith(info.split + "-"):
        raise DataError(f"{MANIFEST_NAME}: bad shard file name {info.file!r}")
    if info.tokens <= 0 or not _HEX64.fullmatch(info.sha256):
        raise DataError(f"{MANIFEST_NAME}: shard {info.file}: bad token count or sha256")
    return info
