"""A node whose run spec is not the one the contract records refuses to start, saying
so; one with the recorded spec joins (the daemons' MemNet records its spec's hash)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from node.runtime.miner import MinerService
from node.runtime.runspec import RunAssets, RunMismatchError
from tests.support.daemons import MemNet
from tests.support.keys import identity


async def test_a_node_with_another_spec_refuses_to_start(tmp_path: Path) -> None:
    net = MemNet(tmp_path)
    other = dataclasses.replace(net.spec, inner_steps=net.spec.inner_steps + 1)
    who = identity(1)
    stranger = MinerService(net.config("stranger"), other, RunAssets(other), who,
                            net.network.node(who, other.run), net.async_chain(who), stake=10**18)
    with pytest.raises(RunMismatchError, match="not the one the contract records"):
        await asyncio.wait_for(stranger.run(asyncio.Event()), timeout=60)
    assert stranger.uid == -1  # it never registered
    member = net.miner("member", 2)
    stop = asyncio.Event()
    task = asyncio.create_task(member.run(stop))
    try:
        await net.until(lambda: member.uid >= 0, 30, "the member to register")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
