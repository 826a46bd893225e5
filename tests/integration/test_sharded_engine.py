"""A miner as 2 FSDP2 ranks on gloo (CPU) against one process: the same window gives
the same envelope bytes, the same error feedback (so the same Δ) and the same θ after
the outer step, bit for bit — for the tiny and the small model, over two windows.

The single process trains with micro-batches of the rows one rank trains on: FSDP2
then averages exactly what gradient accumulation sums (docs/engine.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from node.engine.config import EngineConfig
from node.engine.data import window_batch
from node.engine.local import LocalEngine
from node.outer.optimizers import OuterConfig, SparseLoCo
from node.outer.step import select
from protocol.envelope import BaseModel, Expectation, seal
from tests.support.keys import identity
from tests.support.sharded import RUN, engine_spec

ROOT = Path(__file__).resolve().parents[2]
WORLD, ROWS, WINDOWS, STEPS = 2, 4, 2, 3
TOKENS = np.random.default_rng(3).integers(0, 256, 200_000, dtype=np.uint16)


def _batches(window: int, uid: int, seq_len: int) -> list[torch.Tensor]:
    return [window_batch(TOKENS, seed=0, window=window, uid=uid, step=s, batch_size=ROWS,
                         seq_len=seq_len) for s in range(STEPS)]


def _other(model: str, window: int, seq_len: int) -> bytes:
    """Another miner's envelope for `window` (trained from θ_init: any valid one will do)."""
    engine = LocalEngine(engine_spec(model))
    engine.train(_batches(window, 2, seq_len))
    return seal(identity(2), run_id=RUN, window=window, base=BaseModel(window, engine.digest()),
                codec=engine.codec, manifest=engine.manifest, payload=engine.encode())


def _run_ranks(out: Path, model: str, job: str = "sharded_job", world: int = WORLD) -> float:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    rendezvous = out / "rendezvous"
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", f"tests.support.{job}", str(r),
                               str(world), str(rendezvous), str(out), model, str(WINDOWS)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = []
    for p in procs:
        stdout, _ = p.communicate(timeout=600)
        logs.append(stdout)
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return time.perf_counter() - start


@pytest.mark.parametrize(("model", "seq_len"), [("tiny", 64), ("small", 32)])
def test_two_ranks_equal_one_process_bit_for_bit(tmp_path: Path, model: str,
                                                 seq_len: int) -> None:
    for w in range(WINDOWS):
        save_file({str(i): b for i, b in enumerate(_batches(w, 1, seq_len))},
                  str(tmp_path / f"batches-{w}.safetensors"))
        (tmp_path / f"other-{w}.bin").write_bytes(_other(model, w, seq_len))
    _run_ranks(tmp_path, model)
    sharded_digests = json.loads((tmp_path / "digests.json").read_text())

    single = LocalEngine(engine_spec(model), config=EngineConfig(micro_batch=ROWS // WORLD))
    for w in range(WINDOWS):
        single.train(_batches(w, 1, seq_len))
        payload = single.encode()
        wire = (tmp_path / f"own-{w}.bin").read_bytes()
        assert payload in wire, f"window {w}: the envelope's payload differs"
        error = load_file(str(tmp_path / f"error-{w}.safetensors"))
        mine = single.local_state()
        assert set(error) == set(mine)
        assert all(torch.equal(error[k], mine[k]) for k in mine), f"window {w}: error feedback"
        other = (tmp_path / f"other-{w}.bin").read_bytes()
        chosen, _ = select([wire, other], Expectation(RUN, w, single.codec, single.manifest),
                           {identity(1).address, identity(2).address})
        assert len(chosen) == 2
        single.apply(chosen)
        assert single.digest().hex() == sharded_digests[w], f"window {w}: θ after the step"


def test_sharded_encoding_over_three_ranks_equals_one_process(tmp_path: Path) -> None:
    """Three ranks split `tiny`'s rows so that some tensors fall on chunk boundaries (each
    rank encodes its own rows) and others do not (gathered whole): the payload and the
    error feedback equal one process's, window after window."""
    spec = engine_spec("tiny")
    single = LocalEngine(spec)
    gen = torch.Generator().manual_seed(9)
    for w in range(WINDOWS):
        delta = {t.name: torch.randn(t.shape, generator=gen) * 1e-3 for t in single.manifest}
        save_file(delta, str(tmp_path / f"delta-{w}.safetensors"))
    _run_ranks(tmp_path, "tiny", job="codec_job", world=3)
    sharded = json.loads((tmp_path / "sharded.json").read_text())
    assert any(sharded), "no tensor was encoded from its shards"
    assert not all(sharded), "no tensor took the gathered path"
    outer = SparseLoCo(OuterConfig(), single.manifest)
    for w in range(WINDOWS):
        delta = load_file(str(tmp_path / f"delta-{w}.safetensors"))
        payload = outer.encode([delta[t.name] for t in single.manifest])
        assert payload == (tmp_path / f"payload-{w}.bin").read_bytes(), f"window {w}"
    error = load_file(str(tmp_path / "error.safetensors"))
    assert all(torch.equal(error[k], v) for k, v in outer.local_state().items())
