"""Miner and validator services on an in-memory chain and mesh, with a fast block clock.

The services are the real ones (node/runtime/miner.py, validator/service.py); only the
chain (`MemoryChain`) and the mesh (`MemoryMesh`) are in-memory, so a whole
network's windows take a couple of seconds each.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

from chain.client import ChainParams
from chain.memory import MemoryChain
from node.mesh import MemoryNetwork
from node.runtime.aio import pause
from node.runtime.chainview import AsyncChain
from node.runtime.core import NodeConfig, NodeCore
from node.runtime.miner import MinerService
from node.runtime.runfile import spec_sha256
from node.runtime.runspec import RunAssets, RunSpec
from protocol.identity import Identity
from tests.support.keys import identity
from validator.service import ValidatorService

# 4 s windows (16 blocks of 0.25 s): a miner settles the last window, steps and trains
# in the first 3 s (the commit phase, 12 blocks) and releases in the last second
SPEC = RunSpec(run="memnet", inner_steps=4, batch_size=4, seq_len=64, eval_batches=2,
               corpus_bytes=2 * 2**20, warmup_steps=4, commit_phase=0.75)


class MemNet:
    def __init__(self, tmp: Path, *, block_time: float = 0.25, blocks_per_window: int = 16,
                 spec: RunSpec = SPEC) -> None:
        self.tmp = tmp
        self.block_time = block_time
        self.spec = spec
        self.assets = RunAssets(spec)
        self.chain = MemoryChain(ChainParams(blocks_per_window=blocks_per_window,
                                             windows_per_epoch=2, reveal_windows=1,
                                             immunity_windows=2), fund=100 * 10**18,
                                 run_spec=spec_sha256(spec))  # every node checks it
        self.lock = threading.Lock()
        self.network = MemoryNetwork()
        self.stop = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.services: dict[str, NodeCore] = {}
        self.stops: dict[str, asyncio.Event] = {}

    def async_chain(self, who: Identity) -> AsyncChain:
        return AsyncChain(self.chain.client(who.address_hex), self.lock, kind="memory")

    def config(self, name: str) -> NodeConfig:
        return NodeConfig(name=name, data_dir=self.tmp / name, gather_grace=0.5, poll=0.05,
                          fetch_timeout=5.0, record_timeout=1.0)

    def miner(self, name: str, n: int) -> MinerService:
        who = identity(n)
        return MinerService(self.config(name), self.spec, self.assets, who,
                            self.network.node(who, self.spec.run), self.async_chain(who),
                            stake=10**18)

    def validator(self, name: str, n: int) -> ValidatorService:
        who = identity(n)
        return ValidatorService(self.config(name), self.spec, self.assets, who,
                                self.network.node(who, self.spec.run), self.async_chain(who),
                                stake=10**18, validator_seed=7,
                                db_path=self.tmp / name / "validator.sqlite", eval_batches=2)

    def start(self, service: Any) -> None:
        name = service.cfg.name
        self.services[name] = service
        self.stops[name] = asyncio.Event()
        self.tasks[name] = asyncio.create_task(service.run(self.stops[name]))

    async def halt(self, name: str) -> None:
        self.stops[name].set()
        await asyncio.wait_for(self.tasks[name], timeout=30)

    async def tick(self) -> None:
        while not self.stop.is_set():
            await pause(self.stop, self.block_time)
            with self.lock:
                self.chain.mine(1)

    async def until(self, cond: Any, timeout: float, what: str) -> None:
        """Poll `cond()` (while re-raising any service's crash) until it holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            for name, task in self.tasks.items():
                if task.done() and task.exception() is not None:
                    raise AssertionError(f"{name} crashed") from task.exception()
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for event in self.stops.values():
            event.set()
        for task in self.tasks.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=30)
        self.stop.set()
