"""The chain as the rest of gradmesh sees it: one small Protocol, two implementations.

`Web3ChainClient` (chain/web3client.py) talks to the GradMeshNetwork contract
on a real EVM; `MemoryChain` (chain/memory.py) keeps the same rules in memory
for other packages' unit tests. tests/chain/test_client_contract.py runs one
suite against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

WEIGHT_SCALE = 1_000_000  # weights are fixed-point: 1.0 == 1_000_000


class Role(IntEnum):
    NONE = 0
    MINER = 1
    VALIDATOR = 2


@dataclass(frozen=True)
class ChainParams:
    """Deploy-time parameters of a network (immutable afterwards)."""

    blocks_per_window: int = 5
    windows_per_epoch: int = 4
    reveal_windows: int = 1
    min_stake: int = 10**18
    max_miners: int = 256
    max_validators: int = 16
    immunity_windows: int = 8
    unstake_cooldown_windows: int = 8
    emission_per_epoch: int = 10**18
    validator_share_bps: int = 2000
    aggregation_size: int = 16

    def as_tuple(self) -> tuple[int, ...]:
        return (self.blocks_per_window, self.windows_per_epoch, self.reveal_windows,
                self.min_stake, self.max_miners, self.max_validators, self.immunity_windows,
                self.unstake_cooldown_windows, self.emission_per_epoch,
                self.validator_share_bps, self.aggregation_size)


@dataclass(frozen=True)
class PeerInfo:
    address: str
    role: Role
    uid: int
    stake: int
    active: bool


@dataclass(frozen=True)
class MinerSlot:
    uid: int
    address: str
    stake: int
    registered_window: int
    peer_id: bytes


@dataclass(frozen=True)
class Contribution:
    digest: bytes  # 32 bytes; all zero when there is no commitment
    block: int  # the block the commitment landed in (0: none)


class ChainClient(Protocol):
    """What miners, validators and the CLI need from the chain. `address` is the
    account this client signs with; amounts are in wei."""

    @property
    def address(self) -> str: ...
    def block_number(self) -> int: ...
    def genesis_block(self) -> int: ...
    def run_spec_hash(self) -> bytes:
        """sha256 of the run spec recorded at deployment (32 zero bytes: none)."""
        ...
    def params(self) -> ChainParams: ...
    def current_window(self) -> int: ...
    def current_epoch(self) -> int: ...
    def register(self, role: Role, peer_id: bytes, stake: int) -> int: ...
    def add_stake(self, amount: int) -> None: ...
    def request_unstake(self) -> None: ...
    def withdraw_stake(self) -> None: ...
    def commit_contribution(self, window: int, digest: bytes) -> None:
        """Commit to the sha256 of the envelope this miner will publish in `window`
        (the current window; once per window)."""
        ...
    def contribution_of(self, window: int, miner: str) -> Contribution:
        """`miner`'s commitment in `window` (zero digest, block 0 when none)."""
        ...
    def commit_weights(self, epoch: int, commitment: bytes) -> None: ...
    def reveal_weights(self, epoch: int, uids: Sequence[int], weights: Sequence[int],
                       salt: bytes) -> None: ...
    def settle(self, epoch: int) -> None: ...
    def claim(self) -> int: ...
    def role_of(self, address: str) -> PeerInfo: ...
    def miners(self) -> list[MinerSlot]: ...
    def aggregation_set(self) -> list[tuple[int, str]]: ...
    def last_consensus(self) -> tuple[int, list[int]]: ...
    def balance_of(self, address: str) -> int: ...
    def emission_pool(self) -> int: ...
    def carried(self) -> int: ...
    def is_settled(self, epoch: int) -> bool: ...
    def commitment_of(self, epoch: int, validator: str) -> bytes: ...
    def has_revealed(self, epoch: int, validator: str) -> bool: ...
