"""`MemoryChainClient`: a `ChainClient` acting as one address on a `MemoryChain`
(chain/memory.py), which holds the rules and the state; this side only reads it
and calls its transactions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from eth_utils import to_checksum_address

from chain.client import ChainParams, Contribution, MinerSlot, PeerInfo, Role

if TYPE_CHECKING:
    from chain.memory import MemoryChain, _Vote


class MemoryChainClient:
    """A `ChainClient` acting as one address on a `MemoryChain`."""

    def __init__(self, chain: MemoryChain, address: str) -> None:
        self.chain = chain
        self._address = address

    @property
    def address(self) -> str:
        return self._address

    def block_number(self) -> int:
        return self.chain.block

    def params(self) -> ChainParams:
        return self.chain.p

    def genesis_block(self) -> int:
        return self.chain.genesis

    def run_spec_hash(self) -> bytes:
        return self.chain.run_spec

    def current_window(self) -> int:
        return self.chain.window()

    def current_epoch(self) -> int:
        return self.chain.window() // self.chain.p.windows_per_epoch

    def register(self, role: Role, peer_id: bytes, stake: int) -> int:
        return self.chain.register(self._address, Role(role), peer_id, stake)

    def add_stake(self, amount: int) -> None:
        self.chain.add_stake(self._address, amount)

    def request_unstake(self) -> None:
        self.chain.request_unstake(self._address)

    def withdraw_stake(self) -> None:
        self.chain.withdraw_stake(self._address)

    def commit_contribution(self, window: int, digest: bytes) -> None:
        self.chain.commit_contribution(self._address, window, digest)

    def contribution_of(self, window: int, miner: str) -> Contribution:
        empty = Contribution(bytes(32), 0)
        return self.chain.contributions.get(window, {}).get(to_checksum_address(miner), empty)

    def commit_weights(self, epoch: int, commitment: bytes) -> None:
        self.chain.commit(self._address, epoch, commitment)

    def reveal_weights(self, epoch: int, uids: Sequence[int], weights: Sequence[int],
                       salt: bytes) -> None:
        self.chain.reveal(self._address, epoch, uids, weights, salt)

    def settle(self, epoch: int) -> None:
        self.chain.settle(epoch)

    def claim(self) -> int:
        return self.chain.claim(self._address)

    def role_of(self, address: str) -> PeerInfo:
        address = to_checksum_address(address)
        m = self.chain.members.get(address)
        if m is None:
            return PeerInfo(address, Role.NONE, 0, 0, False)
        return PeerInfo(address, m.role, m.uid, m.stake, m.active)

    def miners(self) -> list[MinerSlot]:
        return [MinerSlot(uid, s.address, self.chain.members[s.address].stake,
                          s.registered_window, self.chain.peer_ids[s.address])
                for uid, s in sorted(self.chain.miner_slots.items())]

    def aggregation_set(self) -> list[tuple[int, str]]:
        slots = sorted(self.chain.miner_slots.items(), key=lambda item: (-item[1].weight, item[0]))
        return [(uid, s.address) for uid, s in slots[: self.chain.p.aggregation_size]]

    def last_consensus(self) -> tuple[int, list[int]]:
        if self.chain.last_consensus_epoch is None:
            return 0, []
        weights = [0] * self.chain.p.max_miners
        for uid, slot in self.chain.miner_slots.items():
            weights[uid] = slot.weight
        return self.chain.last_consensus_epoch, weights

    def balance_of(self, address: str) -> int:
        return self.chain.balances.get(to_checksum_address(address), 0)

    def emission_pool(self) -> int:
        return self.chain.pool

    def carried(self) -> int:
        return self.chain.carried

    def is_settled(self, epoch: int) -> bool:
        return epoch in self.chain.settled

    def _vote(self, epoch: int, validator: str) -> _Vote | None:
        return self.chain.votes.get(epoch, {}).get(to_checksum_address(validator))

    def commitment_of(self, epoch: int, validator: str) -> bytes:
        vote = self._vote(epoch, validator)
        return vote.commitment if vote else bytes(32)

    def has_revealed(self, epoch: int, validator: str) -> bool:
        vote = self._vote(epoch, validator)
        return bool(vote and vote.revealed)
