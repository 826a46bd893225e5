"""Catch-up in a run with a public second moment (node/runtime/catchup.py): replayed
windows are folded, each once, and a node's own checkpoint goes first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from node.engine.data import PUBLIC_UID, window_batch
from tests.support.catchup import PUBLIC_SPEC, RUN, TOKENS, History, MakeJoiner, make_engine

# --- 7. the public second moment -----------------------------------------------------------


def _public(window: int) -> tuple[torch.Tensor, int]:
    """A window's public batch and first step (H = 2)."""
    return window_batch(TOKENS, seed=0, window=window, uid=PUBLIC_UID, step=0, batch_size=2,
                        seq_len=32), 2 * window


@pytest.mark.parametrize("lag", [0, 1])
async def test_replayed_windows_fold_the_public_batch_of_the_window_their_theta_trains(
        tmp_path: Path, history: History, joiner: MakeJoiner, lag: int) -> None:
    """A miner stopped after training the window that trains from θ of 4 (window 4 + lag),
    with its local checkpoint of window 4, replays 4 and 5: that window is not folded again,
    window 5 + lag is folded at θ of 5, and the estimate is the one a validator folding
    every window at its θ holds, bit for bit."""
    a, b_address = history.a, history.b_address
    node = joiner(history.network, store=tmp_path, spec=PUBLIC_SPEC)
    node.engine.load_params(a.thetas[4])
    node.engine.fold_public(*_public(4 + lag))
    node.engine.save_local(4, {"digest": a.digests[4].hex(), "run": RUN})
    node.engine.reset()  # the restart
    assert not any(k.startswith("public.") for k in node.engine.local_state())
    result = await node.catch_up([a.address, b_address], now=6, public=_public, lag=lag)
    assert result.text == "local checkpoint of window 4, replayed 2 windows, now at window 6"
    assert node.engine.digest() == a.digests[6]
    validator = make_engine(spec=PUBLIC_SPEC).evaluator()  # another node's
    for w in (4, 5):
        batch, first_step = _public(w + lag)
        validator.observe_public(a.thetas[w], batch, PUBLIC_SPEC.inner, tag=first_step)
    state = node.engine.local_state()
    assert validator.public is not None
    assert validator.public.sq is not None
    assert int(state["public.windows"]) == 2
    assert all(torch.equal(state[f"public.{i}"], t) for i, t in enumerate(validator.public.sq))


async def test_with_a_public_second_moment_the_own_checkpoint_goes_first_then_the_newest(
        tmp_path: Path, history: History, joiner: MakeJoiner) -> None:
    """Its own checkpoint (window 3) keeps the estimate, so it is replayed from even though
    A's (window 4) is newer; one from before every record (window 2) cannot reach A's, so
    A's is taken after all. Without a public second moment the newest always wins."""
    a, b_address = history.a, history.b_address
    node = joiner(history.network, store=tmp_path, spec=PUBLIC_SPEC)
    node.engine.load_params(a.thetas[3])
    node.engine.save_local(3, {"digest": a.digests[3].hex(), "run": RUN})
    result = await node.catch_up([a.address, b_address], now=6, public=_public)
    assert result.text == "local checkpoint of window 3, replayed 3 windows, now at window 6"
    assert node.engine.digest() == a.digests[6]
    assert int(node.engine.local_state()["public.windows"]) == 3
    for store, window in ((tmp_path / "old", 2), (tmp_path / "plain", 3)):
        other = joiner(history.network, store=store, spec=PUBLIC_SPEC)
        other.engine.load_params(a.thetas[3])
        other.engine.save_local(window, {"digest": a.digests[3].hex(), "run": RUN})
        result = await other.catch_up([a.address, b_address], now=6,
                                      public=_public if window == 2 else None)
        assert result.text == (f"checkpoint of window 4 from 0x{a.address.hex()[:8]}, "
                               "replayed 2 windows, now at window 6")
        assert other.engine.digest() == a.digests[6]
