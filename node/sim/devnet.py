"""`gradmesh devnet`: a whole network on this machine, in one process, on 127.0.0.1.

An embedded EVM (or anvil) with the contract deployed, a bootstrap mesh node,
N miners, one validator and the dashboard, each a real service with its own
chain key, libp2p host (loopback only) and chain client. The embedded chain
has no clock of its own, so a ticker mines a block every `block_time` seconds
(anvil gets `--block-time`); windows follow those blocks as on a real chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from chain.client import ChainParams
from chain.deploy import deploy_network
from chain.errors import ChainError
from chain.launch import AnvilChain, EmbeddedChain
from chain.web3client import Web3ChainClient
from node.engine.config import EngineConfig
from node.mesh.p2p import P2PConfig, P2PMesh
from node.runtime.chainview import AsyncChain, add_validator_balances, read_chain_snapshot
from node.runtime.core import NodeConfig, NodeCore
from node.runtime.miner import MinerService
from node.runtime.runfile import write_run_file
from node.runtime.runspec import RunAssets, RunSpec
from node.status import SCHEMA, ChainSnapshot, Snapshot
from protocol.identity import Identity

log = logging.getLogger(__name__)
MARKER = ".gradmesh-devnet"  # in a devnet's data folder: it may be emptied by the next one
RUN_SPEC_FILE = "run-spec.json"  # the devnet's run spec, its hash on the contract


@dataclass(frozen=True)
class DevnetConfig:
    miners: int = 3
    windows: int = 6  # windows every first miner trains through
    late_joiner_after: int | None = None  # start one more miner after this many windows
    chain: str = "embedded"  # or "anvil"
    block_time: float = 0.5
    blocks_per_window: int = 40  # 20 s windows: 3 miners + a validator share 2 cores
    windows_per_epoch: int = 2
    dashboard_port: int = 0
    data_dir: Path = Path("devnet-data")
    spec: RunSpec = field(default_factory=RunSpec)
    torch_threads: int | None = 1
    bf16_miners: int = 0  # the last N miners train with bf16 autocast (operator setting)
    miner_ranks: int = 1  # miner-0 runs as this many FSDP2 ranks (this process is rank 0)

    def __post_init__(self) -> None:
        from node.errors import ConfigError

        if self.miners < 1:
            raise ConfigError(f"devnet miners must be at least 1, got {self.miners}")
        if self.windows < 1:
            raise ConfigError(f"devnet windows must be at least 1, got {self.windows}")


class DevnetProvider:
    """The dashboard's view of the devnet: every service's snapshot plus the chain's."""

    def __init__(self, nodes: Callable[[], list[NodeCore]], chain: AsyncChain,
                 validators: list[str]) -> None:
        self.nodes = nodes
        self.chain = chain
        self.validators = validators

    async def chain_snapshot(self) -> ChainSnapshot | None:
        snap = await read_chain_snapshot(self.chain)
        if snap is not None:
            with contextlib.suppress(ChainError):
                await self.chain.call(add_validator_balances, snap, self.chain.client,
                                      self.validators)
        return snap

    async def snapshot(self) -> Snapshot:
        nodes = self.nodes()
        return Snapshot(schema=SCHEMA, run=nodes[0].spec.run if nodes else "",
                        generated_at=time.time(), chain=await self.chain_snapshot(),
                        nodes=[n.snapshot() for n in nodes])

    def health(self) -> tuple[bool, str]:
        bad = [n.cfg.name for n in self.nodes() if n.state == "stopped"]
        return (not bad, f"stopped: {', '.join(bad)}" if bad else "all services running")


class Devnet:
    def __init__(self, config: DevnetConfig) -> None:
        self.cfg = config
        self.chain_lock = threading.Lock()
        self.launcher: Any = None
        self.contract = ""
        self.bootstrap: P2PMesh | None = None
        self.miners: list[MinerService] = []
        self.validator: NodeCore | None = None
        self.dashboard_url = ""
        self.initial_loss = float("nan")
        self.assets = RunAssets(config.spec)
        self.final_chain: ChainSnapshot | None = None
        self.provider: DevnetProvider | None = None
        self.rank_group: Any = None  # miner-0's other ranks (`miner_ranks` > 1)

    # --- setup -----------------------------------------------------------------------------
    def chain_params(self) -> ChainParams:
        return ChainParams(blocks_per_window=self.cfg.blocks_per_window,
                           windows_per_epoch=self.cfg.windows_per_epoch, reveal_windows=1,
                           immunity_windows=4, unstake_cooldown_windows=2)

    def start_chain(self) -> None:
        if self.cfg.chain == "anvil":
            self.launcher = AnvilChain(block_time=self.cfg.block_time)
        else:
            self.launcher = EmbeddedChain()
        key = self.launcher.accounts[0].key
        # the run spec file every node verifies, its hash recorded on the contract
        spec_hash = write_run_file(self.cfg.spec, self.cfg.data_dir / RUN_SPEC_FILE)
        self.contract = deploy_network(self.launcher.w3, key, self.chain_params(),
                                       fund=100 * 10**18, run_spec=spec_hash)

    def account(self, index: int) -> Identity:
        return Identity.from_secret(bytes(self.launcher.accounts[index].key))

    def async_chain(self, index: int) -> AsyncChain:
        client = Web3ChainClient(self.launcher.w3, self.contract, self.launcher.accounts[index].key)
        return AsyncChain(client, self.chain_lock, kind=self.launcher.kind, contract=self.contract)

    def mesh(self, identity: Identity) -> P2PMesh:
        boot = self.bootstrap.dial_addrs if self.bootstrap else ()
        return P2PMesh(identity, P2PConfig(run=self.cfg.spec.run, bootstrap=tuple(boot)))

    def node_config(self, name: str) -> NodeConfig:
        return NodeConfig(name=name, data_dir=self.cfg.data_dir / name)

    def make_miner(self, i: int) -> MinerService:
        identity = self.account(1 + i)
        config = self.node_config(f"miner-{i}")
        if self.cfg.miners - self.cfg.bf16_miners <= i < self.cfg.miners:
            config = replace(config, engine=EngineConfig(precision="bf16"))
        engine = None
        if i == 0 and self.cfg.miner_ranks > 1:
            from node.engine.ranks import RankGroup

            self.rank_group = RankGroup(self.cfg.miner_ranks, self.assets.spec.engine_spec(),
                                        config.engine, checkpoints=config.data_dir / "checkpoints")
            engine = self.rank_group.leader
        return MinerService(config, self.cfg.spec, self.assets, identity,
                            self.mesh(identity), self.async_chain(1 + i), stake=10**18,
                            engine=engine)

    def make_validator(self) -> NodeCore:
        from validator.service import ValidatorService

        index = 1 + self.cfg.miners + 1  # after the miners and the late joiner
        identity = self.account(index)
        name = "validator-0"
        return ValidatorService(self.node_config(name), self.cfg.spec, self.assets, identity,
                                self.mesh(identity), self.async_chain(index), stake=10**18,
                                validator_seed=1234,
                                db_path=self.cfg.data_dir / name / "validator.sqlite")

    def nodes(self) -> list[NodeCore]:
        return [*self.miners, *([self.validator] if self.validator else [])]

    # --- run -------------------------------------------------------------------------------
    async def tick(self, stop: asyncio.Event) -> None:
        """The embedded chain's block clock."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.cfg.block_time)
            if not stop.is_set():
                await asyncio.to_thread(self._mine_locked)

    def _mine_locked(self) -> None:
        with self.chain_lock:
            self.launcher.mine(1)

    def first_miners_done(self) -> bool:
        return all(len(m.history) >= self.cfg.windows for m in self.miners[: self.cfg.miners])

    def fresh_data_dir(self) -> None:
        """Every devnet starts a new chain, so the nodes' state of an earlier devnet (θ,
        checkpoints, the validator's votes) must not carry over: a folder this class
        made (it holds MARKER) is emptied; any other non-empty folder is refused."""
        from node.errors import ConfigError

        root = self.cfg.data_dir
        if root.exists() and any(root.iterdir()):
            names = {p.name for p in root.iterdir()}
            legacy = all(re.fullmatch(r"(miner|validator)-\d+", n) for n in names)
            if not (root / MARKER).exists() and not legacy:
                raise ConfigError(f"{root} is not empty and was not made by a devnet: "
                                  "give an empty or new --data-dir")
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER).write_text("made by gradmesh devnet; emptied when a devnet starts\n")

    async def run(self, stop: asyncio.Event, on_window: Callable[[int], None] | None = None,
                  serve_dashboard: bool = True) -> None:
        from node.dashboard.app import make_app
        from node.dashboard.server import start_server, stop_server

        self.fresh_data_dir()
        self.start_chain()
        identity = self.account(self.cfg.miners + 3)
        self.bootstrap = P2PMesh(identity, P2PConfig(run=self.cfg.spec.run))
        await self.bootstrap.start()
        self.miners = [self.make_miner(i) for i in range(self.cfg.miners)]
        self.validator = self.make_validator()
        provider = DevnetProvider(self.nodes, self.validator.chain,
                                  [self.validator.identity.address_hex])
        runner = None
        if serve_dashboard:
            runner, self.dashboard_url = await start_server(
                make_app(provider, title="gradmesh devnet"), "127.0.0.1", self.cfg.dashboard_port)
        self.provider = provider
        self.initial_loss = self.assets.engine().evaluate(self.assets.eval_batches)
        services_stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                if self.cfg.chain != "anvil":
                    tg.create_task(self.tick(services_stop))
                for node in self.nodes():
                    tg.create_task(node.run(services_stop))
                tg.create_task(self._watch(stop, services_stop, tg, on_window))
            self.final_chain = await provider.chain_snapshot()  # before the chain goes away
        finally:
            if runner is not None:
                await stop_server(runner)
            if self.rank_group is not None:
                self.rank_group.close()
            await self.bootstrap.stop()
            if self.launcher is not None:
                self.launcher.close()

    async def _watch(self, stop: asyncio.Event, services_stop: asyncio.Event,
                     tg: asyncio.TaskGroup, on_window: Callable[[int], None] | None) -> None:
        reported = 0
        late_started = False
        while not stop.is_set() and not self.first_miners_done():
            done = min(len(m.history) for m in self.miners[: self.cfg.miners])
            if done > reported and on_window:
                for _ in range(done - reported):
                    on_window(reported)
                    reported += 1
            if (self.cfg.late_joiner_after is not None and not late_started
                    and done >= self.cfg.late_joiner_after):
                late = self.make_miner(self.cfg.miners)
                self.miners.append(late)
                tg.create_task(late.run(services_stop))
                late_started = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.25)
        if on_window:
            for _ in range(self.cfg.windows - reported):
                on_window(reported)
                reported += 1
        await self._settle(stop)
        services_stop.set()

    async def _settle(self, stop: asyncio.Event) -> None:
        """Before stopping, bring every node to the same θ: halt each one after the newest
        window a miner has applied (they keep serving the mesh) and wait, bounded by
        three windows, until the laggards have applied it too and all digests agree.
        The target is fixed once: a node that syncs past empty windows reports a later
        `applied` with the same θ, and chasing it would restart the others."""
        target = max(m.applied for m in self.miners)
        for node in self.nodes():
            node.halt_after(target)
        deadline = time.monotonic() + 3 * self.cfg.blocks_per_window * self.cfg.block_time
        while not stop.is_set() and time.monotonic() < deadline:
            if (all(n.applied >= target for n in self.nodes())
                    and len({n.digest for n in self.nodes()}) == 1):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.25)
        log.warning("devnet: nodes still on different windows at the end: %s",
                    {n.cfg.name: n.applied for n in self.nodes()})
