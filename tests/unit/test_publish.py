"""Two-phase publication, the miner's side (node/runtime/publish.py), on the in-memory
contract rules: commit, hold until the release block, never release after a late
commitment."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from chain.client import ChainParams, Role
from chain.memory import MemoryChain
from node.runtime.chainview import AsyncChain
from node.runtime.publish import commit_then_hold
from tests.support.keys import identity

PARAMS = ChainParams(blocks_per_window=10, min_stake=1)
WIRE = b"an envelope"


def _miner() -> tuple[MemoryChain, AsyncChain]:
    chain = MemoryChain(PARAMS)
    client = chain.client(identity(1).address_hex)
    client.register(Role.MINER, b"peer", 1)
    return chain, AsyncChain(client)


class _Clock:
    """The miner's chain client, mining one block after each block-number read: the chain
    moves as the miner looks at it, so no thread's timing decides what the test sees."""

    def __init__(self, chain: MemoryChain, client: Any) -> None:
        self._chain, self._client = chain, client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def block_number(self) -> int:
        block = self._client.block_number()
        self._chain.mine(1)
        return int(block)


def test_commits_then_holds_until_the_release_block() -> None:
    chain, view = _miner()
    chain.mine(10 - chain.block)  # window 1 begins; release block 15
    clocked = AsyncChain(_Clock(chain, view.client), view.lock)
    why = asyncio.run(commit_then_hold(clocked, 1, WIRE, 0.5, poll=0.001,
                                       stop=asyncio.Event()))
    assert why is None
    assert chain.block >= 16  # it returned only after it had read the release block
    c = view.client.contribution_of(1, view.address)
    assert c.digest == hashlib.sha256(WIRE).digest()
    assert 10 <= c.block < 15


def test_training_past_the_commit_phase_publishes_nothing() -> None:
    chain, view = _miner()
    chain.mine(14 - chain.block)  # the next transaction would land in the release block
    why = asyncio.run(commit_then_hold(view, 1, WIRE, 0.5, poll=0.001, stop=asyncio.Event()))
    assert why is not None
    assert "overran the commit phase" in why
    assert view.client.contribution_of(1, view.address).block == 0  # nothing sent


def test_a_refused_commitment_publishes_nothing() -> None:
    chain, view = _miner()
    chain.mine(10 - chain.block)
    why = asyncio.run(commit_then_hold(view, 2, WIRE, 0.5, poll=0.001, stop=asyncio.Event()))
    assert why is not None
    assert "WrongWindow" in why


def test_stopping_while_held() -> None:
    chain, view = _miner()
    chain.mine(10 - chain.block)
    stop = asyncio.Event()
    stop.set()
    assert asyncio.run(commit_then_hold(view, 1, WIRE, 0.5, poll=0.001, stop=stop)) == "stopping"
