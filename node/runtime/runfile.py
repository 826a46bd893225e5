"""The run spec as one file every peer verifies, and its hash on the contract.

`gradmesh run init` writes the consensus settings of a run (model, vocabulary,
tokenizer and data hashes, H, k, codec, learning rates and schedule, seeds,
scoring and publication switches) as JSON; its sha256 — over a canonical form of
those settings, so formatting does not matter — is recorded on the contract at
deployment (`runSpecHash`). Every miner and validator computes the hash of the
spec it runs and refuses to start when the contract records another one.
Where the shards live on a node's disk (`data`) is that node's business and is
not part of the spec; their manifest hash is.

This module reads and writes files and compares hashes; it never talks to the
chain itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from node.engine.shards import read_manifest
from node.errors import ConfigError
from node.runtime.runspec import RunAssets, RunMismatchError, RunSpec

VERSION = 1
LOCAL_FIELDS = frozenset({"data", "init_from"})  # paths on this node's disk: never consensus
NO_SPEC = bytes(32)


class RunFileError(ConfigError):
    """A run spec file is unreadable, of another version, or names unknown settings."""


def consensus_fields(spec: RunSpec) -> dict[str, Any]:
    """The file's content: its version and every setting but the local paths."""
    return {"gradmesh_run_spec": VERSION, **{f.name: getattr(spec, f.name)
                                             for f in dataclasses.fields(RunSpec)
                                             if f.name not in LOCAL_FIELDS}}


def spec_sha256(spec: RunSpec) -> bytes:
    """sha256 over the canonical JSON of the consensus settings (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(consensus_fields(spec), sort_keys=True,
                                     separators=(",", ":")).encode()).digest()


def write_run_file(spec: RunSpec, path: Path) -> bytes:
    """Write the spec (human-readable JSON); returns its sha256."""
    body = consensus_fields(spec)
    path.write_text(json.dumps(body, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return spec_sha256(spec)


def read_run_file(path: Path, data: Path | None = None, init_from: Path | None = None
                  ) -> RunSpec:
    """The `RunSpec` a file names, with this node's shard folder `data` and starting
    weights `init_from`."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFileError(f"run spec {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.pop("gradmesh_run_spec", None) != VERSION:
        raise RunFileError(f"run spec {path}: not a version-{VERSION} gradmesh run spec")
    known = {f.name for f in dataclasses.fields(RunSpec)} - LOCAL_FIELDS
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RunFileError(f"run spec {path}: unknown settings {', '.join(unknown)}")
    try:
        return RunSpec(**raw, data=data, init_from=init_from)
    except TypeError as exc:
        raise RunFileError(f"run spec {path}: {exc}") from exc


def pin_data(spec: RunSpec) -> RunSpec:
    """Pin the spec to this node's files: the shards' tokenizer and manifest hashes (the
    vocabulary follows the tokenizer when unset) and the starting weights' θ digest."""
    if spec.data is not None:
        manifest = read_manifest(spec.data)
        spec = dataclasses.replace(spec, tokenizer_sha256=spec.tokenizer_sha256
                                   or manifest.tokenizer.sha256,
                                   data_sha256=spec.data_sha256 or manifest.manifest_sha256)
    if spec.init_from is not None and not spec.init_sha256:
        digest = RunAssets(spec).engine().digest()
        spec = dataclasses.replace(spec, init_sha256=digest.hex())
    return spec


def check_recorded(spec: RunSpec, recorded: bytes) -> None:
    """Refuse to run `spec` on a network that recorded another spec's hash."""
    if recorded == NO_SPEC:
        return
    mine = spec_sha256(spec)
    if mine != recorded:
        raise RunMismatchError(
            f"this node's run spec (sha256 {mine.hex()}) is not the one the contract records "
            f"({recorded.hex()}): get the run's spec file (gradmesh run init writes one) "
            "and start with --run-spec FILE")
