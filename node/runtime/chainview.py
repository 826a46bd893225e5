"""The chain from inside an asyncio service.

`ChainClient` calls block (HTTP or an in-process EVM), so services run them in
a worker thread; one lock per chain keeps an in-process EVM shared by several
services in one process (the devnet) to one caller at a time. Errors stay
typed `ChainError`s for the caller to decide; `read_chain_snapshot` never
raises (the dashboard shows "chain unreachable" instead).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from chain.client import ChainClient, Role
from chain.errors import ChainError
from node.runtime.aio import pause
from node.status import BalanceRow, ChainSnapshot
from protocol.window import Schedule

log = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncChain:
    def __init__(self, client: ChainClient, lock: threading.Lock | None = None,
                 kind: str = "rpc", contract: str = "") -> None:
        self.client = client
        self.lock = lock or threading.Lock()
        self.kind = kind
        self.contract = contract
        self._window = -1
        self._params: Any = None
        self._schedule: Schedule | None = None

    @property
    def address(self) -> str:
        return self.client.address

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        def locked() -> T:
            with self.lock:
                return fn(*args)

        return await asyncio.to_thread(locked)

    async def params(self) -> Any:
        if self._params is None:  # deploy-time constants
            self._params = await self.call(self.client.params)
        return self._params

    async def schedule(self) -> Schedule:
        """Blocks to windows and epochs (deploy-time constants)."""
        if self._schedule is None:
            params = await self.params()
            genesis = await self.call(self.client.genesis_block)
            self._schedule = Schedule(genesis, params.blocks_per_window,
                                      params.windows_per_epoch)
        return self._schedule

    async def window(self) -> int:
        self._window = await self.call(self.client.current_window)
        return self._window

    @property
    def last_window(self) -> int:
        """The last window read (without a chain call; -1 before the first read)."""
        return self._window

    async def wait_window(self, target: int, poll: float, stop: asyncio.Event) -> int:
        """Poll until the chain's window is at least `target` (or `stop` is set)."""
        while not stop.is_set():
            try:
                now = await self.window()
                if now >= target:
                    return now
            except ChainError as exc:
                log.warning("chain: %s", exc)
            await pause(stop, poll)
        return self._window


async def read_chain_snapshot(chain: AsyncChain) -> ChainSnapshot | None:
    try:
        return await chain.call(_snapshot, chain.client, chain.kind, chain.contract)
    except ChainError as exc:
        log.info("chain snapshot: %s", exc)
        return None


def _snapshot(client: ChainClient, kind: str, contract: str) -> ChainSnapshot:
    params = client.params()
    block = client.block_number()
    balances: list[BalanceRow] = []
    for m in client.miners():
        balances.append(BalanceRow(address=m.address, role="miner", uid=m.uid,
                                   stake_wei=m.stake, claimable_wei=client.balance_of(m.address)))
    return ChainSnapshot(
        kind=kind, contract=contract, block=block,
        window=client.current_window(), epoch=client.current_epoch(),
        blocks_per_window=params.blocks_per_window, windows_per_epoch=params.windows_per_epoch,
        aggregation_set=[uid for uid, _ in client.aggregation_set()], balances=balances,
    )  # fmt: skip


def add_validator_balances(snapshot: ChainSnapshot, client: ChainClient,
                           addresses: list[str]) -> None:
    """Validators are not listed by `miners()`; add the ones a caller knows of."""
    for address in addresses:
        info = client.role_of(address)
        if info.role == Role.VALIDATOR:
            snapshot["balances"].append(BalanceRow(
                address=info.address, role="validator", uid=info.uid, stake_wei=info.stake,
                claimable_wei=client.balance_of(info.address)))
