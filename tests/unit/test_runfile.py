"""The run spec file (node/runtime/runfile.py): one hash per run, whatever the file's
formatting or where a node keeps its shards; a different spec is refused by name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from node.errors import ConfigError
from node.runtime.runfile import (
    NO_SPEC,
    check_recorded,
    read_run_file,
    spec_sha256,
    write_run_file,
)
from node.runtime.runspec import RunMismatchError, RunSpec

SPEC = RunSpec(run="spec-test", inner_steps=6, commit_phase=0.6, score_warmup=2)


def test_a_spec_file_round_trips_to_the_same_spec_and_hash(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    digest = write_run_file(SPEC, path)
    assert read_run_file(path) == SPEC
    assert spec_sha256(read_run_file(path)) == digest
    # reformatted by hand: the same settings, the same hash
    path.write_text(json.dumps(json.loads(path.read_text()), indent=None))
    assert spec_sha256(read_run_file(path)) == digest
    # where a node keeps its shards is its own business
    assert spec_sha256(dataclasses.replace(SPEC, data=tmp_path)) == digest
    # every consensus setting moves the hash
    for change in ({"inner_steps": 7}, {"k": 32}, {"seed": 1}, {"commit_phase": 0.5},
                   {"tokenizer_sha256": "ab" * 32}, {"vocab_size": 512}, {"overlap": True}):
        assert spec_sha256(dataclasses.replace(SPEC, **change)) != digest, change
    assert spec_sha256(dataclasses.replace(SPEC, public_second_moment=0.9)) != digest


@pytest.mark.parametrize(("text", "match"), [
    ("not json", "run spec"),
    ('{"gradmesh_run_spec": 2}', "version-1"),
    ('{"gradmesh_run_spec": 1, "inner_stpes": 4}', "unknown settings inner_stpes"),
    ('{"gradmesh_run_spec": 1, "data": "/x"}', "unknown settings data"),
    ('{"gradmesh_run_spec": 1, "inner_steps": 0}', "inner_steps"),
])
def test_bad_files_are_typed_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "run.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):  # RunFileError, or the spec's own check
        read_run_file(path)


def test_a_node_runs_only_the_spec_the_contract_records() -> None:
    check_recorded(SPEC, NO_SPEC)  # nothing recorded: nothing to check
    check_recorded(SPEC, spec_sha256(SPEC))
    other = spec_sha256(dataclasses.replace(SPEC, inner_steps=7))
    with pytest.raises(RunMismatchError, match=other.hex()):
        check_recorded(SPEC, other)
