"""Checkpoints written behind the window loop (node/runtime/checkpointer.py): the loop
waits for the snapshot alone, the checkpoint holds θ as it was then, one is written at a
time, and a failed write is reported without stopping the node."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import torch

from node.runtime.checkpoint import CheckpointManifest, make_checkpoint
from node.runtime.checkpointer import Checkpointer, Snapshot
from node.runtime.miner import MinerService
from tests.support.daemons import MemNet


def _held_writes(miner: MinerService) -> threading.Event:
    """Make the miner's disk writes wait for the returned gate (a slow disk)."""
    gate, write = threading.Event(), miner.engine.write_local

    def held(*args: Any) -> None:
        assert gate.wait(60)
        write(*args)

    miner.engine.write_local = held  # type: ignore[method-assign]
    return gate


def _events(miner: MinerService) -> list[str]:
    return [e["event"] for e in miner.timeline]


async def test_the_loop_waits_for_the_snapshot_and_the_checkpoint_holds_theta_then(
        tmp_path: Path) -> None:
    miner = MemNet(tmp_path).miner("m0", 0)
    await miner.mesh.start()
    gate = _held_writes(miner)
    try:
        theta = miner.engine.full_params()
        digest = miner.engine.digest()
        await miner.save_checkpoint(wait=False)  # back once θ is copied
        assert miner.checkpointer.busy
        assert miner.checkpoint is None
        miner.engine.load_params([p + 1 for p in theta])  # the next window moves θ on
        await miner.save_checkpoint(wait=False)  # due again while the first is written
        assert miner.checkpointer.skipped == 1
        assert "checkpoint skipped: the last one is still being written" in _events(miner)
        gate.set()
        await miner.checkpointer.wait()

        assert miner.checkpoint is not None
        window, sha = miner.checkpoint
        held = CheckpointManifest.decode(await miner.mesh.fetch((miner.mesh.peer_id, sha),
                                                                timeout=5))
        expected, _ = make_checkpoint(miner.identity, run=miner.spec.run, window=window,
                                      model=miner.spec.model, manifest=miner.manifest,
                                      params=theta)
        assert held.param_digest == expected.param_digest
        local = miner.engine.latest_local()
        assert local is not None
        assert local.meta["digest"] == digest.hex()
        assert all(torch.equal(a, b) for a, b in zip(local.params, theta, strict=True))
        assert miner.checkpointer.written == 1
    finally:
        gate.set()
        await miner.mesh.stop()


async def test_a_failed_write_is_reported_and_the_next_one_is_written(tmp_path: Path) -> None:
    miner = MemNet(tmp_path).miner("m0", 0)
    await miner.mesh.start()
    try:
        write = miner.engine.write_local

        def full_disk(*args: Any) -> None:
            raise OSError(28, "No space left on device")

        miner.engine.write_local = full_disk  # type: ignore[method-assign]
        await miner.save_checkpoint(wait=False)
        await miner.checkpointer.wait()
        assert miner.checkpoint is None
        assert any(e.startswith("checkpoint failed: OSError") for e in _events(miner))
        miner.engine.write_local = write  # type: ignore[method-assign]
        await miner.save_checkpoint()  # waits for the whole write
        assert miner.checkpoint is not None
        assert miner.checkpointer.written == 1
    finally:
        await miner.mesh.stop()


async def test_one_write_at_a_time_and_waiting_for_it() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    done: list[int] = []

    async def write(snap: Snapshot) -> None:
        started.set()
        await release.wait()
        done.append(snap.window)

    reports: list[tuple[int, str]] = []
    checkpointer = Checkpointer(write, lambda w, text: reports.append((w, text)))
    await checkpointer.wait()  # nothing in the works: returns at once
    assert checkpointer.ready(4)
    checkpointer.start(Snapshot(4, [], {}, {}))
    await started.wait()
    assert not checkpointer.ready(6)
    assert reports == [(6, "checkpoint skipped: the last one is still being written")]
    release.set()
    await checkpointer.wait()
    assert done == [4]
    assert checkpointer.ready(6)
