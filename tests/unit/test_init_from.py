"""Continued pre-training: a run starts from a Hugging Face Llama folder (--init-from),
pinned in the run spec by its θ digest; every engine starts there, and other weights
are refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from node.engine.config import EngineConfig
from node.engine.hf import export_model
from node.engine.model import build_model, get_config
from node.engine.ranks import decode_spec, encode_spec
from node.outer.step import params_digest
from node.runtime.runfile import pin_data, read_run_file, spec_sha256, write_run_file
from node.runtime.runspec import RunAssets, RunMismatchError, RunSpec

SPEC = RunSpec(run="init", corpus_bytes=2**16)


def _weights(tmp_path: Path, seed: int) -> tuple[Path, bytes]:
    params = [p.detach() for p in build_model(get_config("tiny"), seed=seed).parameters()]
    out = export_model(params, get_config("tiny"), tmp_path / f"hf-{seed}")
    return out, params_digest(params)


def test_a_run_starts_from_the_pinned_weights(tmp_path: Path) -> None:
    folder, digest = _weights(tmp_path, seed=11)
    spec = pin_data(dataclasses.replace(SPEC, init_from=folder))
    assert spec.init_sha256 == digest.hex()
    engine = RunAssets(spec).engine()
    assert engine.digest() == digest != RunAssets(SPEC).engine().digest()
    engine.load_params([torch.zeros_like(t) for t in engine.full_params()])
    engine.reset()  # θ_init is the imported θ, not the seed's
    assert engine.digest() == digest
    # the spec file pins the digest, not the folder (a local path)
    written = write_run_file(spec, tmp_path / "run.json")
    assert spec_sha256(read_run_file(tmp_path / "run.json", init_from=folder)) == written
    # the follower ranks get the folder with their engine spec
    assert decode_spec(encode_spec(spec.engine_spec(), EngineConfig()))[0].init_from == folder


def test_other_weights_or_none_are_refused(tmp_path: Path) -> None:
    folder, digest = _weights(tmp_path, seed=11)
    other, _ = _weights(tmp_path, seed=12)
    pinned = dataclasses.replace(SPEC, init_sha256=digest.hex())
    with pytest.raises(RunMismatchError, match="not the run's starting point"):
        RunAssets(dataclasses.replace(pinned, init_from=other)).engine()
    with pytest.raises(RunMismatchError, match="give --init-from"):
        RunAssets(pinned).engine()
    assert RunAssets(dataclasses.replace(pinned, init_from=folder)).engine().digest() == digest
