"""`RankGroup`: rank 0 in this process leads a follower process (node/engine/follower.py)
through the Engine calls a miner makes; a follower that dies ends the leader's next
call with a typed `RankError`, never a hang."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from node.engine.config import EngineConfig
from node.engine.data import window_batch
from node.engine.local import LocalEngine
from node.engine.ranks import RankError, RankGroup
from tests.support.sharded import engine_spec

TOKENS = np.random.default_rng(5).integers(0, 256, 100_000, dtype=np.uint16)


def _batches() -> list[torch.Tensor]:
    return [window_batch(TOKENS, seed=0, window=0, uid=0, step=s, batch_size=4, seq_len=32)
            for s in range(2)]


def test_a_miner_over_two_ranks_trains_checkpoints_and_closes(tmp_path) -> None:
    group = RankGroup(2, engine_spec("tiny"), EngineConfig(), checkpoints=tmp_path / "ck")
    try:
        engine = group.leader
        start = engine.digest()
        assert start == LocalEngine(engine_spec("tiny")).digest()  # θ_init everywhere
        engine.train(_batches())
        payload = engine.encode()
        single = LocalEngine(engine_spec("tiny"), config=EngineConfig(micro_batch=2))
        single.train(_batches())
        assert payload == single.encode()
        engine.save_local(3, {"note": "x"})
        saved = engine.latest_local()
        assert saved is not None
        assert saved.window == 3
        engine.load_params([torch.zeros_like(t) for t in engine.full_params()])
        engine.restore_local(saved)
        assert engine.digest() == start
    finally:
        codes = group.close()
    assert codes == [0]


def test_over_two_ranks_the_public_second_moment_is_gathered_kept_and_folded_once(
        tmp_path) -> None:
    """The sharded estimate made whole is the one process's, a restore brings its shards
    back, and the next window sends the one process's bytes; `fold_public` reaches the
    follower (a window folded already is skipped on both ranks)."""
    base = engine_spec("tiny")
    spec = replace(base, inner=replace(base.inner, reset_each_window=True,
                                       public_second_moment=0.9))
    public = [window_batch(TOKENS, seed=1, window=w, uid=7, step=0, batch_size=4, seq_len=32)
              for w in range(2)]
    group = RankGroup(2, spec, EngineConfig(), checkpoints=tmp_path / "ck")
    single = LocalEngine(spec, config=EngineConfig(micro_batch=2))
    try:
        engine = group.leader
        for e in (engine, single):
            e.train(_batches(), 0, public[0])
            e.fold_public(public[0], 0)  # window 0 again: skipped
        assert engine.encode() == single.encode()
        state, mine = engine.local_state(), single.local_state()
        assert int(state["public.windows"]) == 1
        assert all(torch.equal(state[k], mine[k]) for k in mine if k.startswith("public."))
        engine.save_local(1, {})
        saved = engine.latest_local()
        assert saved is not None
        engine.load_params(engine.full_params())  # forgets the estimate on both ranks
        engine.restore_local(saved)
        for e in (engine, single):
            e.train(_batches(), 2, public[1])
        assert engine.encode() == single.encode()
    finally:
        codes = group.close()
    assert codes == [0]


def _train_until_it_fails(group: RankGroup) -> None:
    for _ in range(3):  # the first send may still land in a socket buffer
        group.leader.train(_batches())


def test_a_dying_follower_is_a_rank_error(tmp_path) -> None:
    group = RankGroup(2, engine_spec("tiny"), EngineConfig())
    try:
        group.leader.digest()
        group.followers[0].kill()
        group.followers[0].wait(timeout=30)
        with pytest.raises(RankError):
            _train_until_it_fails(group)
    finally:
        group.close(timeout=10)
