"""`MemoryChain`: the GradMeshNetwork rules in memory, for other packages' tests
(a `ChainClient` over it: chain/memory_client.py).

It mirrors chain/contracts/GradMeshNetwork.sol (same phases, pruning, median,
clipping and integer split with carried remainders) and, like an auto-mining
node, every successful transaction mines one block. tests/chain runs one suite
against this and the real contract, so the two cannot drift apart silently.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from eth_utils import to_checksum_address

from chain import errors as E
from chain.client import WEIGHT_SCALE, ChainParams, Contribution, Role
from chain.commitment import weights_commitment
from chain.memory_client import MemoryChainClient

BPS = 10_000
MAX_PEER_ID = 64
F = TypeVar("F", bound=Callable[..., Any])


def transaction(method: F) -> F:
    """Run like an auto-mined transaction: in block `latest + 1`, kept only on success."""

    @functools.wraps(method)
    def wrapper(self: MemoryChain, *args: Any, **kwargs: Any) -> Any:
        self.block += 1
        try:
            return method(self, *args, **kwargs)
        except E.ContractRevertError:
            self.block -= 1
            raise

    return wrapper  # type: ignore[return-value]


@dataclass
class _Member:
    role: Role
    uid: int
    stake: int
    registered_window: int
    active: bool = True
    unlock_window: int = 0


@dataclass
class _Slot:
    address: str
    registered_window: int
    weight: int = 0


@dataclass
class _Vote:
    commitment: bytes
    stake: int = 0
    weights: dict[int, int] = field(default_factory=dict)
    revealed: bool = False


class MemoryChain:
    """Shared state; `client(address)` gives a `ChainClient` acting as `address`."""

    def __init__(self, params: ChainParams, fund: int = 0, run_spec: bytes = bytes(32)) -> None:
        self.p = params
        self.run_spec = run_spec
        self.block = 0
        self.genesis = 0
        self.pool = fund
        self.carried = 0
        self.members: dict[str, _Member] = {}
        self.peer_ids: dict[str, bytes] = {}
        self.miner_slots: dict[int, _Slot] = {}
        self.validator_slots: dict[int, str] = {}
        self.free_miner_uids: list[int] = []
        self.free_validator_uids: list[int] = []
        self.miner_high = self.validator_high = 0
        self.contributions: dict[int, dict[str, Contribution]] = {}
        self.votes: dict[int, dict[str, _Vote]] = {}
        self.revealers: dict[int, list[str]] = {}
        self.settled: set[int] = set()
        self.balances: dict[str, int] = {}
        self.last_consensus_epoch: int | None = None
        self.paid_out: dict[str, int] = {}  # wei sent by claims and withdrawals

    def client(self, address: str) -> MemoryChainClient:
        return MemoryChainClient(self, to_checksum_address(address))

    def mine(self, blocks: int = 1) -> None:
        self.block += blocks

    def window(self) -> int:
        return (self.block - self.genesis) // self.p.blocks_per_window

    def _send(self, to: str, amount: int) -> None:
        self.paid_out[to] = self.paid_out.get(to, 0) + amount

    # --- membership --------------------------------------------------------------------
    @transaction
    def register(self, sender: str, role: Role, peer_id: bytes, value: int) -> int:
        if role not in (Role.MINER, Role.VALIDATOR):
            raise E.revert_error("InvalidRole", (int(role),))
        if not 0 < len(peer_id) <= MAX_PEER_ID:
            raise E.revert_error("InvalidPeerId", (len(peer_id),))
        if value < self.p.min_stake:
            raise E.revert_error("StakeTooLow", (value, self.p.min_stake))
        if sender in self.members:
            raise E.revert_error("AlreadyRegistered", (sender,))
        w = self.window()
        if role == Role.MINER:
            uid = self._take_miner_slot(w)
            self.miner_slots[uid] = _Slot(sender, w)
        else:
            uid = self._take_validator_slot()
            self.validator_slots[uid] = sender
        self.members[sender] = _Member(role, uid, value, w)
        self.peer_ids[sender] = peer_id
        return uid

    def _take_miner_slot(self, w: int) -> int:
        if self.free_miner_uids:
            return self.free_miner_uids.pop()
        if self.miner_high < self.p.max_miners:
            self.miner_high += 1
            return self.miner_high - 1
        eligible = [(s.weight, s.registered_window, uid) for uid, s in self.miner_slots.items()
                    if s.registered_window + self.p.immunity_windows <= w]
        if not eligible:
            raise E.revert_error("CapacityFull")
        uid = min(eligible)[2]
        pruned = self.members[self.miner_slots[uid].address]
        pruned.active, pruned.unlock_window = False, w
        del self.miner_slots[uid]
        return uid

    def _take_validator_slot(self) -> int:
        if self.free_validator_uids:
            return self.free_validator_uids.pop()
        if self.validator_high >= self.p.max_validators:
            raise E.revert_error("CapacityFull")
        self.validator_high += 1
        return self.validator_high - 1

    def _active_member(self, sender: str) -> _Member:
        member = self.members.get(sender)
        if member is None:
            raise E.revert_error("NotRegistered", (sender,))
        if not member.active:
            raise E.revert_error("NotActive", (sender,))
        return member

    @transaction
    def add_stake(self, sender: str, value: int) -> None:
        if value == 0:
            raise E.revert_error("ZeroValue")
        self._active_member(sender).stake += value

    @transaction
    def request_unstake(self, sender: str) -> None:
        member = self._active_member(sender)
        member.active, member.unlock_window = False, self.window() + self.p.unstake_cooldown_windows
        if member.role == Role.MINER:
            del self.miner_slots[member.uid]
            self.free_miner_uids.append(member.uid)
        else:
            del self.validator_slots[member.uid]
            self.free_validator_uids.append(member.uid)

    @transaction
    def withdraw_stake(self, sender: str) -> None:
        member = self.members.get(sender)
        if member is None:
            raise E.revert_error("NotRegistered", (sender,))
        if member.active:
            raise E.revert_error("StillActive", (sender,))
        if self.window() < member.unlock_window:
            raise E.revert_error("CooldownActive", (member.unlock_window,))
        del self.members[sender]
        self.peer_ids.pop(sender, None)
        self._send(sender, member.stake)

    # --- commit-reveal ------------------------------------------------------------------
    def _validator(self, sender: str) -> _Member:
        member = self.members.get(sender)
        if member is None or member.role != Role.VALIDATOR or not member.active:
            raise E.revert_error("NotValidator", (sender,))
        return member

    @transaction
    def commit_contribution(self, sender: str, window: int, digest: bytes) -> None:
        member = self.members.get(sender)
        if member is None or member.role != Role.MINER or not member.active:
            raise E.revert_error("NotMiner", (sender,))
        w = self.window()
        if window != w:
            raise E.revert_error("WrongWindow", (window, w))
        if digest == bytes(32):
            raise E.revert_error("EmptyCommitment")
        mine = self.contributions.setdefault(w, {})
        if sender in mine:
            raise E.revert_error("AlreadyCommitted", (w,))
        mine[sender] = Contribution(digest, self.block)

    @transaction
    def commit(self, sender: str, epoch: int, commitment: bytes) -> None:
        self._validator(sender)
        w = self.window()
        if epoch != w // self.p.windows_per_epoch:
            raise E.revert_error("WrongPhase", (epoch, w))
        if commitment == bytes(32):
            raise E.revert_error("EmptyCommitment")
        self.votes.setdefault(epoch, {})[sender] = _Vote(commitment)

    @transaction
    def reveal(self, sender: str, epoch: int, uids: Sequence[int], weights: Sequence[int],
               salt: bytes) -> None:
        member = self._validator(sender)
        w, start = self.window(), (epoch + 1) * self.p.windows_per_epoch
        if not start <= w < start + self.p.reveal_windows:
            raise E.revert_error("WrongPhase", (epoch, w))
        vote = self.votes.get(epoch, {}).get(sender)
        if vote is None:
            raise E.revert_error("NoCommitment")
        if vote.revealed:
            raise E.revert_error("AlreadyRevealed")
        if len(uids) != len(weights):
            raise E.revert_error("LengthMismatch", (len(uids), len(weights)))
        seen: dict[int, int] = {}
        for uid, weight in zip(uids, weights, strict=True):
            if uid >= self.p.max_miners:
                raise E.revert_error("UidOutOfRange", (uid,))
            if uid in seen:
                raise E.revert_error("DuplicateUid", (uid,))
            if weight > WEIGHT_SCALE:
                raise E.revert_error("WeightOutOfRange", (uid, weight))
            seen[uid] = weight
        if weights_commitment(sender, epoch, uids, weights, salt) != vote.commitment:
            raise E.revert_error("CommitMismatch")
        vote.revealed, vote.stake, vote.weights = True, member.stake, seen
        self.revealers.setdefault(epoch, []).append(sender)

    # --- settlement ---------------------------------------------------------------------
    @transaction
    def settle(self, epoch: int) -> None:
        if epoch in self.settled:
            raise E.revert_error("AlreadySettled", (epoch,))
        w = self.window()
        if w < (epoch + 1) * self.p.windows_per_epoch + self.p.reveal_windows:
            raise E.revert_error("WrongPhase", (epoch, w))
        self.settled.add(epoch)
        emission = min(self.pool, self.p.emission_per_epoch)
        self.pool -= emission
        total = emission + self.carried
        revealers = self.revealers.get(epoch, [])
        votes = [self.votes[epoch][a] for a in revealers]
        consensus, clipped = self._consensus(votes, (epoch + 1) * self.p.windows_per_epoch)
        sum_consensus = sum(consensus.values())
        if not revealers or sum_consensus == 0:
            self.carried = total
            return
        update = self.last_consensus_epoch is None or epoch > self.last_consensus_epoch
        if update:
            self.last_consensus_epoch = epoch
            for uid, slot in self.miner_slots.items():
                slot.weight = consensus.get(uid, 0)
        miner_pool = total * (BPS - self.p.validator_share_bps) // BPS
        paid = 0
        for uid in sorted(consensus):
            pay = miner_pool * consensus[uid] // sum_consensus
            self._credit(self.miner_slots[uid].address, pay)
            paid += pay
        scores = [v.stake * (c * WEIGHT_SCALE // sum_consensus) for v, c in zip(votes, clipped,
                                                                               strict=True)]
        if sum(scores):
            for address, score in zip(revealers, scores, strict=True):
                pay = (total - miner_pool) * score // sum(scores)
                self._credit(address, pay)
                paid += pay
        self.carried = total - paid

    def _consensus(self, votes: list[_Vote], epoch_end: int) -> tuple[dict[int, int], list[int]]:
        consensus: dict[int, int] = {}
        clipped = [0] * len(votes)
        total_stake = sum(v.stake for v in votes)
        for uid, slot in self.miner_slots.items():
            if slot.registered_window >= epoch_end:
                continue
            column = sorted(((v.weights.get(uid, 0), v.stake) for v in votes),
                            key=lambda pair: pair[0])
            c, cum = 0, 0
            for weight, stake in column:  # lower stake-weighted median
                cum += stake
                if cum * 2 >= total_stake:
                    c = weight
                    break
            if c == 0:
                continue
            consensus[uid] = c
            for i, v in enumerate(votes):
                clipped[i] += min(v.weights.get(uid, 0), c)
        return consensus, clipped

    def _credit(self, address: str, amount: int) -> None:
        if amount:
            self.balances[address] = self.balances.get(address, 0) + amount

    @transaction
    def claim(self, sender: str) -> int:
        amount = self.balances.get(sender, 0)
        if amount == 0:
            raise E.revert_error("NothingToClaim")
        self.balances[sender] = 0
        self._send(sender, amount)
        return amount
