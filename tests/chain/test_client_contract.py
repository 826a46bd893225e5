"""One suite for every `ChainClient`: MemoryChain, the embedded EVM and anvil.

Exact wei amounts are asserted, so the in-memory rules and the contract must
agree to the last unit on the same scenario.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chain import errors as E
from chain.client import Contribution, Role
from chain.commitment import weights_commitment
from chain.launch import find_anvil
from tests.support.chains import (
    FUND,
    RUN_SPEC,
    TEST_PARAMS,
    MemoryHarness,
    Web3Harness,
    mine_to_window,
)

MINERS = [1, 2, 3]  # account indices
VALIDATORS = [4, 5, 6]
EPOCH_WINDOWS = TEST_PARAMS.windows_per_epoch


@pytest.fixture(params=["memory", "embedded", "anvil"])
def harness(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        h: Any = MemoryHarness()
    else:
        if request.param == "anvil" and find_anvil() is None:
            pytest.skip("anvil not installed: npm install --prefix chain")
        h = Web3Harness(request.param)
    yield h
    h.close()


def register_all(h: Any, stakes: dict[int, int] | None = None) -> None:
    stakes = stakes or {}
    for n in MINERS:
        h.client(n).register(Role.MINER, f"miner-{n}".encode(), stakes.get(n, 1000))
    for n in VALIDATORS:
        h.client(n).register(Role.VALIDATOR, f"val-{n}".encode(), stakes.get(n, 1000 * n))


def vote(h: Any, votes: dict[int, dict[int, int]], epoch: int = 0) -> None:
    """Commit in `epoch`, reveal in the next epoch's reveal window."""
    if h.client(0).current_window() < epoch * EPOCH_WINDOWS:
        mine_to_window(h, epoch * EPOCH_WINDOWS)
    assert h.client(0).current_epoch() == epoch
    for n, weights in votes.items():
        c = h.client(n)
        c.commit_weights(epoch, weights_commitment(c.address, epoch, list(weights),
                                                   list(weights.values()), b"s" * 32))
    mine_to_window(h, (epoch + 1) * EPOCH_WINDOWS)
    for n, weights in votes.items():
        h.client(n).reveal_weights(epoch, list(weights), list(weights.values()), b"s" * 32)
    mine_to_window(h, (epoch + 1) * EPOCH_WINDOWS + TEST_PARAMS.reveal_windows)


def test_registration_and_stake_rules(harness: Any) -> None:
    miner = harness.client(1)
    uid = miner.register(Role.MINER, b"peer-1", 1000)
    info = miner.role_of(miner.address)
    assert (info.role, info.uid, info.stake, info.active) == (Role.MINER, uid, 1000, True)
    assert [m.address for m in miner.miners()] == [miner.address]
    assert miner.miners()[0].peer_id == b"peer-1"
    with pytest.raises(E.AlreadyRegistered):
        miner.register(Role.MINER, b"peer-1", 1000)
    with pytest.raises(E.StakeTooLow) as low:
        harness.client(2).register(Role.MINER, b"peer-2", 999)
    assert low.value.values == (999, 1000)
    with pytest.raises(E.NotRegistered):
        harness.client(3).add_stake(5)
    with pytest.raises(E.InvalidRole):
        harness.client(3).register(Role.NONE, b"x", 1000)
    miner.add_stake(500)
    assert miner.role_of(miner.address).stake == 1500


def test_unstake_cooldown(harness: Any) -> None:
    miner = harness.client(1)
    miner.register(Role.MINER, b"peer-1", 1000)
    with pytest.raises(E.StillActive):
        miner.withdraw_stake()
    miner.request_unstake()
    assert miner.miners() == []
    with pytest.raises(E.CooldownActive):
        miner.withdraw_stake()
    mine_to_window(harness, miner.current_window() + TEST_PARAMS.unstake_cooldown_windows)
    miner.withdraw_stake()
    assert miner.role_of(miner.address).role == Role.NONE


def test_bad_weight_vectors_are_named(harness: Any) -> None:
    register_all(harness)
    v = harness.client(4)
    uids, weights = [0, 1], [5, 6]
    mine_to_window(harness, EPOCH_WINDOWS)
    epoch = 1
    v.commit_weights(epoch, weights_commitment(v.address, epoch, uids, weights, b"s" * 32))
    with pytest.raises(E.WrongPhase):  # too early to reveal
        v.reveal_weights(epoch, uids, weights, b"s" * 32)
    mine_to_window(harness, (epoch + 1) * EPOCH_WINDOWS)
    with pytest.raises(E.LengthMismatch):
        v.reveal_weights(epoch, [0, 1], [5], b"s" * 32)
    with pytest.raises(E.DuplicateUid):
        v.reveal_weights(epoch, [0, 0], [5, 6], b"s" * 32)
    with pytest.raises(E.WeightOutOfRange):
        v.reveal_weights(epoch, [0, 1], [5, 1_000_001], b"s" * 32)
    with pytest.raises(E.UidOutOfRange):
        v.reveal_weights(epoch, [0, 99], [5, 6], b"s" * 32)
    with pytest.raises(E.CommitMismatch):
        v.reveal_weights(epoch, uids, [5, 7], b"s" * 32)
    with pytest.raises(E.NotValidator):
        harness.client(1).reveal_weights(epoch, uids, weights, b"s" * 32)
    v.reveal_weights(epoch, uids, weights, b"s" * 32)
    with pytest.raises(E.AlreadyRevealed):
        v.reveal_weights(epoch, uids, weights, b"s" * 32)


def test_contribution_commitments_record_their_block(harness: Any) -> None:
    register_all(harness)
    W = 2
    miner, other = harness.client(1), harness.client(2)
    mine_to_window(harness, W)  # few transactions per window: 4 blocks
    digest = bytes(range(32))
    assert miner.run_spec_hash() == RUN_SPEC  # recorded at deployment, readable by all
    assert miner.genesis_block() == harness.client(0).genesis_block() >= 0
    first = miner.genesis_block() + W * TEST_PARAMS.blocks_per_window
    assert first <= miner.block_number() + 1 < first + TEST_PARAMS.blocks_per_window
    assert miner.contribution_of(W, miner.address) == Contribution(bytes(32), 0)
    miner.commit_contribution(W, digest)
    landed = miner.block_number()
    assert miner.contribution_of(W, miner.address) == Contribution(digest, landed)
    assert miner.contribution_of(W, other.address).block == 0  # per miner
    assert miner.contribution_of(W - 1, miner.address).block == 0  # per window
    with pytest.raises(E.AlreadyCommitted) as again:
        miner.commit_contribution(W, bytes(31) + b"\x01")
    assert again.value.values == (W,)
    with pytest.raises(E.WrongWindow) as wrong:
        other.commit_contribution(W + 1, digest)
    assert wrong.value.values == (W + 1, W)
    with pytest.raises(E.EmptyCommitment):
        other.commit_contribution(W, bytes(32))
    with pytest.raises(E.NotMiner):
        harness.client(4).commit_contribution(W, digest)  # a validator
    with pytest.raises(E.NotMiner):
        harness.client(7).commit_contribution(W, digest)  # a stranger
    other.commit_contribution(W, digest)  # the same digest is the other's own business
    mine_to_window(harness, W + 1)
    miner.commit_contribution(W + 1, digest)
    assert miner.contribution_of(W, miner.address) == Contribution(digest, landed)


def test_copied_commitment_cannot_be_revealed_by_the_copier(harness: Any) -> None:
    register_all(harness)
    honest, copier = harness.client(4), harness.client(5)
    mine_to_window(harness, EPOCH_WINDOWS)
    epoch = 1
    commitment = weights_commitment(honest.address, epoch, [0], [7], b"s" * 32)
    honest.commit_weights(epoch, commitment)
    copier.commit_weights(epoch, commitment)
    mine_to_window(harness, 2 * EPOCH_WINDOWS)
    assert honest.commitment_of(epoch, copier.address) == commitment
    assert not honest.has_revealed(epoch, honest.address)
    honest.reveal_weights(epoch, [0], [7], b"s" * 32)
    assert honest.has_revealed(epoch, honest.address)
    assert honest.commitment_of(epoch, harness.addresses[6]) == bytes(32)
    with pytest.raises(E.CommitMismatch):
        copier.reveal_weights(epoch, [0], [7], b"s" * 32)
    mine_to_window(harness, 2 * EPOCH_WINDOWS + TEST_PARAMS.reveal_windows)
    with pytest.raises(E.WrongPhase):  # late
        copier.reveal_weights(epoch, [0], [7], b"s" * 32)


def test_settlement_is_exact_and_clips_an_outlier(harness: Any) -> None:
    register_all(harness)  # validator stakes 4000, 5000, 6000
    honest = {0: 600_000, 1: 300_000, 2: 100_000}
    outlier = {0: 0, 1: 0, 2: 1_000_000}  # validator 6 pushes miner uid 2
    vote(harness, {4: honest, 5: honest, 6: outlier})
    anyone = harness.client(9)
    with pytest.raises(E.NothingToClaim):
        anyone.claim()
    anyone.settle(0)
    with pytest.raises(E.AlreadySettled):
        anyone.settle(0)
    epoch, consensus = anyone.last_consensus()
    # the stake-weighted median ignores the outlier: 4000 + 5000 of 15000 stake agree
    assert epoch == 0
    assert consensus[:3] == [600_000, 300_000, 100_000]
    addr = harness.addresses
    balances = {n: anyone.balance_of(addr[n]) for n in MINERS + VALIDATORS}
    emission = TEST_PARAMS.emission_per_epoch
    # miners: 80% of 1_000_003 = 800_002 split 6:3:1, floors
    assert [balances[n] for n in MINERS] == [480_001, 240_000, 80_000]
    # validators: 200_001 split by stake x agreement; the outlier agreed on 10% only
    assert balances[6] < balances[4] < balances[5]
    assert sum(balances.values()) + anyone.carried() == emission  # nothing created or lost
    assert anyone.emission_pool() == FUND - emission
    assert [uid for uid, _ in anyone.aggregation_set()] == [0, 1, 2]
    paid = harness.client(1).claim()
    assert paid == 480_001
    assert anyone.balance_of(addr[1]) == 0


def test_half_the_stake_can_veto_but_never_steer(harness: Any) -> None:
    """The decided rule (docs/validator.md, "Validator majority"): consensus is the
    lower stake-weighted median, so validators holding exactly half the stake can hold
    an epoch's emission back (it is carried, not lost) but cannot pay anyone; steering
    pay takes more than half."""
    register_all(harness, {4: 5000, 5: 5000, 6: 5000})
    honest, crony = {0: 500_000, 1: 500_000}, {2: 1_000_000}  # uid 2 publishes nothing
    vote(harness, {4: honest, 5: crony}, epoch=0)
    client, addr = harness.client(9), harness.addresses
    client.settle(0)
    emission = TEST_PARAMS.emission_per_epoch
    assert [client.balance_of(addr[n]) for n in MINERS + VALIDATORS] == [0] * 6
    assert client.carried() == emission  # held back, not lost
    vote(harness, {4: honest, 5: crony, 6: honest}, epoch=1)  # two thirds honest
    client.settle(1)
    paid = [client.balance_of(addr[n]) for n in MINERS]
    assert paid[2] == 0  # the crony's median weight is 0
    assert paid[0] == paid[1] >= 0.8 * emission * 0.99  # 80% of two epochs, halved
    assert sum(client.balance_of(a) for a in addr) + client.carried() == 2 * emission


def test_carried_remainders_conserve_emission_over_epochs(harness: Any) -> None:
    register_all(harness)
    weights = {0: 333_333, 1: 333_333, 2: 333_334}
    vote(harness, {4: weights}, epoch=0)
    harness.client(9).settle(0)
    vote(harness, {5: weights, 6: weights}, epoch=2)
    client = harness.client(9)
    client.settle(1)  # no reveals: everything carried
    client.settle(2)
    total = sum(client.balance_of(a) for a in harness.addresses)
    assert total + client.carried() == 3 * TEST_PARAMS.emission_per_epoch
    assert client.is_settled(1)
    assert client.is_settled(2)


def test_capacity_prunes_the_weakest_after_immunity(harness: Any) -> None:
    for n in range(1, 5):  # fills max_miners = 4
        harness.client(n).register(Role.MINER, f"m{n}".encode(), 1000)
    with pytest.raises(E.CapacityFull):  # everyone still immune
        harness.client(7).register(Role.MINER, b"m7", 1000)
    mine_to_window(harness, harness.client(0).current_window() + TEST_PARAMS.immunity_windows)
    uid = harness.client(7).register(Role.MINER, b"m7", 1000)
    assert uid == 0  # all weights 0: the oldest registration goes first
    pruned = harness.client(1)
    assert pruned.role_of(pruned.address).active is False
    pruned.withdraw_stake()  # the pruned stake is not lost
    assert pruned.role_of(pruned.address).role == Role.NONE
