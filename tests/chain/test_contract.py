"""Behaviour of GradMeshNetwork.sol on both backends (embedded py-evm and anvil)."""

from __future__ import annotations

from typing import Any

from eth_utils import keccak

from tests.chain.conftest import BASE_PARAMS, Net, deploy_net

MINER, VALIDATOR = 1, 2
SCALE = 1_000_000


def miners(net: Net, n: int) -> list[Any]:
    return net.accounts[1 : 1 + n]


def validators(net: Net, n: int) -> list[Any]:
    return net.accounts[10 : 10 + n]


def setup_members(
    net: Net, n_miners: int, n_validators: int, vstakes: list[int] | None = None
) -> tuple[list[Any], list[Any]]:
    ms, vs = miners(net, n_miners), validators(net, n_validators)
    for m in ms:
        net.register(m, MINER)
    for i, v in enumerate(vs):
        net.register(v, VALIDATOR, stake=(vstakes[i] if vstakes else 5_000))
    return ms, vs


def balances(net: Net, accts: list[Any]) -> list[int]:
    return [int(net.contract.functions.balanceOf(a.address).call()) for a in accts]


def held_stakes(net: Net) -> int:
    total = 0
    for a in net.accounts:
        total += int(net.contract.functions.roleOf(a.address).call()[2])
    return total


def assert_solvent(net: Net) -> None:
    """Contract ETH == pool + carried + unclaimed balances + all stakes held, exactly."""
    f = net.contract.functions
    owed = int(f.emissionPool().call()) + int(f.carried().call()) + held_stakes(net)
    owed += sum(balances(net, net.accounts))
    assert net.w3.eth.get_balance(net.address) == owed


# --------------------------------------------------------------------- registration


def test_registration_and_stake_rules(net: Net) -> None:
    f = net.contract.functions
    m, v, stranger = net.accounts[1], net.accounts[10], net.accounts[19]
    r = net.tx(f.register(MINER, b"12D3KooW-miner"), m, 1_500)
    (ev,) = net.events(r, "Registered")
    assert (ev.args.account, ev.args.role, ev.args.uid, ev.args.stake) == (m.address, 1, 0, 1_500)
    assert ev.args.peerId == b"12D3KooW-miner"
    uid_v = net.register(v, VALIDATOR, stake=2_000)
    assert uid_v == 0  # validator uids are their own space
    assert tuple(f.roleOf(m.address).call()) == (1, 0, 1_500, True)
    addr, stake, reg_window, peer = f.minerAt(0).call()
    assert (addr, stake, peer) == (m.address, 1_500, b"12D3KooW-miner")
    assert reg_window <= net.next_tx_window()
    assert (f.minerCount().call(), f.validatorCount().call()) == (1, 1)

    r = net.tx(f.addStake(), m, 250)
    (ev,) = net.events(r, "StakeAdded")
    assert (ev.args.amount, ev.args.stake) == (250, 1_750)
    assert f.roleOf(m.address).call()[2] == 1_750

    assert net.fails(f.register(MINER, b"again"), m, 1_000) == ("AlreadyRegistered", (m.address,))
    assert net.fails(f.register(VALIDATOR, b"again"), v, 1_000) == (
        "AlreadyRegistered",
        (v.address,),
    )
    assert net.fails(f.register(MINER, b"p"), stranger, 999) == ("StakeTooLow", (999, 1_000))
    assert net.fails(f.register(3, b"p"), stranger, 1_000) == ("InvalidRole", (3,))
    assert net.fails(f.register(0, b"p"), stranger, 1_000) == ("InvalidRole", (0,))
    assert net.fails(f.register(MINER, b"x" * 65), stranger, 1_000) == ("InvalidPeerId", (65,))
    assert net.fails(f.register(MINER, b""), stranger, 1_000) == ("InvalidPeerId", (0,))
    assert net.fails(f.addStake(), stranger, 10) == ("NotRegistered", (stranger.address,))
    assert net.fails(f.addStake(), m, 0) == ("ZeroValue", ())
    assert net.fails(f.requestUnstake(), stranger) == ("NotRegistered", (stranger.address,))
    assert net.fails(f.withdrawStake(), stranger) == ("NotRegistered", (stranger.address,))
    assert net.fails(f.withdrawStake(), m) == ("StillActive", (m.address,))
    assert net.fails(f.minerAt(8), m) == ("UidOutOfRange", (8,))
    # a peerId of exactly 64 bytes is fine
    assert net.register(stranger, MINER, peer=b"y" * 64) == 1
    assert_solvent(net)


def test_params_views_and_fund(net: Net) -> None:
    f = net.contract.functions
    assert tuple(f.getParams().call()) == tuple(BASE_PARAMS[k] for k in BASE_PARAMS)
    pool = f.emissionPool().call()
    r = net.tx(f.fund(), net.accounts[5], 12_345)
    (ev,) = net.events(r, "Funded")
    assert (ev.args["from"], ev.args.amount, ev.args.pool) == (
        net.accounts[5].address,
        12_345,
        pool + 12_345,
    )
    assert f.emissionPool().call() == pool + 12_345
    assert net.fails(f.fund(), net.accounts[5], 0) == ("ZeroValue", ())
    net.advance_to_window(9)
    net.chain.mine(1)  # views execute at the latest block: now inside window 9
    assert f.currentWindow().call() == 9
    assert f.currentEpoch().call() == 2
    assert f.lastConsensus().call()[1] == []
    assert_solvent(net)


def test_validator_capacity_is_a_hard_cap(chain: Any) -> None:
    net = deploy_net(chain, maxValidators=2)
    f = net.contract.functions
    v1, v2, v3 = validators(net, 3)
    net.register(v1, VALIDATOR)
    net.register(v2, VALIDATOR)
    assert net.fails(f.register(VALIDATOR, b"v3"), v3, 5_000) == ("CapacityFull", ())
    net.tx(f.requestUnstake(), v1)  # a freed validator slot is reused
    assert net.register(v3, VALIDATOR) == 0


# -------------------------------------------------------------- capacity & pruning


def test_capacity_pruning_respects_immunity_and_keeps_stake(chain: Any) -> None:
    net = deploy_net(chain, maxMiners=3, immunityWindows=3)
    f = net.contract.functions
    m0, m1, m2, newcomer, late = net.accounts[1:6]
    (v,) = validators(net, 1)
    for m in (m0, m1, m2):
        net.register(m, MINER, stake=1_111)
    net.register(v, VALIDATOR)
    # everyone is immune right after registering
    assert net.fails(f.register(MINER, b"new"), newcomer, 1_000) == ("CapacityFull", ())

    # consensus: m1 is the weakest (lowest weight) -> it gets pruned, not the oldest
    _epoch, _ = net.run_epoch({v: ([0, 1, 2], [600_000, 100_000, 300_000])})
    assert list(f.lastConsensus().call()[1]) == [600_000, 100_000, 300_000]
    r = net.tx(f.register(MINER, b"new"), newcomer, 1_000)
    (pr,) = net.events(r, "Pruned")
    assert (pr.args.account, pr.args.uid) == (m1.address, 1)
    assert f.roleOf(newcomer.address).call()[1] == 1
    assert f.minerAt(1).call()[0] == newcomer.address
    assert f.lastConsensus().call()[1][1] == 0  # fresh occupant starts at zero
    assert f.minerCount().call() == 3
    role, _uid, stake, active = f.roleOf(m1.address).call()
    assert (role, stake, active) == (MINER, 1_111, False)

    # the newcomer is immune; m2 (300k) is now the weakest prunable one
    r = net.tx(f.register(MINER, b"late"), late, 1_000)
    (pr,) = net.events(r, "Pruned")
    assert pr.args.account == m2.address

    # pruned stake is not lost: withdrawable at once, exactly
    before = net.w3.eth.get_balance(m1.address)
    r = net.tx(f.withdrawStake(), m1)
    (ev,) = net.events(r, "StakeWithdrawn")
    assert ev.args.amount == 1_111
    assert net.w3.eth.get_balance(m1.address) == before + 1_111 - net.fee(r)
    assert tuple(f.roleOf(m1.address).call()) == (0, 0, 0, False)
    assert_solvent(net)

    # with newcomer and late immune and m0 the only prunable one, m0 goes next;
    # after that everyone is immune -> CapacityFull
    extra1, extra2 = net.accounts[6:8]
    r = net.tx(f.register(MINER, b"e1"), extra1, 1_000)
    assert net.events(r, "Pruned")[0].args.account == m0.address
    assert net.fails(f.register(MINER, b"e2"), extra2, 1_000) == ("CapacityFull", ())


def test_pruning_without_consensus_takes_oldest_lowest_uid(chain: Any) -> None:
    net = deploy_net(chain, maxMiners=2, immunityWindows=1)
    f = net.contract.functions
    m0, m1, newcomer = net.accounts[1:4]
    net.register(m0, MINER)
    net.register(m1, MINER)
    net.advance_to_window(net.next_tx_window() + 2)
    r = net.tx(f.register(MINER, b"n"), newcomer, 1_000)
    assert net.events(r, "Pruned")[0].args.uid == 0


def test_unstake_cooldown(net: Net) -> None:
    f = net.contract.functions
    m, other = net.accounts[1], net.accounts[2]
    net.register(m, MINER, stake=4_321)
    r = net.tx(f.requestUnstake(), m)
    (ev,) = net.events(r, "UnstakeRequested")
    until = ev.args.unlockWindow
    assert until == ev.args.unlockWindow == f.unlockWindowOf(m.address).call()
    assert (ev.args.role, ev.args.uid) == (MINER, 0)
    assert f.minerCount().call() == 0
    assert f.minerAt(0).call()[0] == "0x" + "00" * 20
    assert f.roleOf(m.address).call()[3] is False
    assert net.fails(f.requestUnstake(), m) == ("NotActive", (m.address,))
    assert net.fails(f.addStake(), m, 5) == ("NotActive", (m.address,))
    assert net.fails(f.register(MINER, b"back"), m, 1_000) == ("AlreadyRegistered", (m.address,))
    assert net.fails(f.withdrawStake(), m) == ("CooldownActive", (until,))
    # the freed slot is reused by the next miner
    assert net.register(other, MINER) == 0
    net.advance_to_window(until - 1)
    assert net.fails(f.withdrawStake(), m) == ("CooldownActive", (until,))
    net.advance_to_window(until)
    before = net.w3.eth.get_balance(m.address)
    r = net.tx(f.withdrawStake(), m)
    assert net.events(r, "StakeWithdrawn")[0].args.amount == 4_321
    assert net.w3.eth.get_balance(m.address) == before + 4_321 - net.fee(r)
    # fully gone: may register again
    assert net.register(m, MINER) == 1
    assert_solvent(net)


# ------------------------------------------------------------------- commit-reveal


def test_commit_reveal_rules(net: Net) -> None:
    f = net.contract.functions
    ms, (va, vb, vc) = setup_members(net, 3, 3)
    uids, weights = [0, 1, 2], [500_000, 300_000, 200_000]
    epoch = net.advance_to_next_epoch()
    salt_a, salt_b = keccak(text="a"), keccak(text="b")
    com_a = net.commitment(va, epoch, uids, weights, salt_a)

    assert net.fails(f.commitWeights(epoch, com_a), ms[0]) == ("NotValidator", (ms[0].address,))
    name, args = net.fails(f.commitWeights(epoch + 1, com_a), va)
    assert name == "WrongPhase"
    assert args[0] == epoch + 1
    assert net.fails(f.commitWeights(epoch, b"\0" * 32), va) == ("EmptyCommitment", ())

    r = net.tx(f.commitWeights(epoch, com_a), va)
    (ev,) = net.events(r, "WeightsCommitted")
    assert (ev.args.epoch, ev.args.validator, ev.args.commitment) == (epoch, va.address, com_a)
    assert f.commitmentOf(epoch, va.address).call() == com_a
    # vb copies va's commitment verbatim (it cannot produce its own without the data)
    net.tx(f.commitWeights(epoch, com_a), vb)
    # vc commits honestly to something different
    net.tx(f.commitWeights(epoch, net.commitment(vc, epoch, uids, [1, 2, 3], salt_b)), vc)

    # too early: still the commit epoch
    name, args = net.fails(f.revealWeights(epoch, uids, weights, salt_a), va)
    assert name == "WrongPhase"
    assert args[0] == epoch

    net.to_reveal_phase(epoch)
    # the copier cannot reveal: the commitment binds va's address
    assert net.fails(f.revealWeights(epoch, uids, weights, salt_a), vb) == ("CommitMismatch", ())
    # wrong salt / wrong weights
    assert net.fails(f.revealWeights(epoch, uids, weights, salt_b), va) == ("CommitMismatch", ())
    assert net.fails(f.revealWeights(epoch, uids, [500_000, 300_000, 200_001], salt_a), va) == (
        "CommitMismatch",
        (),
    )
    # bad input is reported by name before the hash check
    assert net.fails(f.revealWeights(epoch, [0, 1], [1, 2, 3], salt_a), va) == (
        "LengthMismatch",
        (2, 3),
    )
    assert net.fails(f.revealWeights(epoch, [0, 1, 1], [1, 2, 3], salt_a), va) == (
        "DuplicateUid",
        (1,),
    )
    assert net.fails(f.revealWeights(epoch, [0, 8], [1, 2], salt_a), va) == ("UidOutOfRange", (8,))
    assert net.fails(f.revealWeights(epoch, [0, 2], [1, SCALE + 1], salt_a), va) == (
        "WeightOutOfRange",
        (2, SCALE + 1),
    )
    # an account that never committed replays va's reveal
    stranger_v = net.accounts[13]
    net.register(stranger_v, VALIDATOR)
    assert net.fails(f.revealWeights(epoch, uids, weights, salt_a), stranger_v) == (
        "NoCommitment",
        (),
    )
    assert net.fails(f.revealWeights(epoch, uids, weights, salt_a), ms[1]) == (
        "NotValidator",
        (ms[1].address,),
    )

    r = net.tx(f.revealWeights(epoch, uids, weights, salt_a), va)
    (ev,) = net.events(r, "WeightsRevealed")
    assert (ev.args.epoch, ev.args.validator, ev.args.count) == (epoch, va.address, 3)
    assert f.revealed(epoch, va.address).call() is True
    assert net.fails(f.revealWeights(epoch, uids, weights, salt_a), va) == ("AlreadyRevealed", ())
    # settling inside the reveal phase is refused
    name, args = net.fails(f.settle(epoch), net.accounts[0])
    assert name == "WrongPhase"

    net.to_settle_phase(epoch)
    # vc missed the reveal phase
    name, args = net.fails(f.revealWeights(epoch, uids, [1, 2, 3], salt_b), vc)
    assert name == "WrongPhase"
    assert args[0] == epoch
    r = net.tx(f.settle(epoch), net.accounts[0])
    assert f.settled(epoch).call() is True
    assert net.fails(f.settle(epoch), net.accounts[0]) == ("AlreadySettled", (epoch,))
    # only va revealed, so only va and the miners earn
    bal = balances(net, [va, vb, vc])
    assert bal[0] > 0
    assert bal[1] == 0
    assert bal[2] == 0
    assert net.events(r, "EpochSettled")[0].args.epoch == epoch
    assert_solvent(net)


# ----------------------------------------------------------------------- consensus


HONEST = [
    [400_000, 300_000, 200_000, 100_000],
    [410_000, 290_000, 200_000, 110_000],
    [390_000, 310_000, 205_000, 95_000],
]
OUTLIER = [0, 0, 0, SCALE]


def _settle_once(chain: Any, with_outlier: bool) -> dict[str, Any]:
    net = deploy_net(chain)
    ms, vs = setup_members(net, 4, 4 if with_outlier else 3)
    votes = {vs[i]: ([0, 1, 2, 3], HONEST[i]) for i in range(3)}
    if with_outlier:
        votes[vs[3]] = ([0, 1, 2, 3], OUTLIER)
    carried_before = net.contract.functions.carried().call()
    _, receipt = net.run_epoch(votes)
    (settled,) = net.events(receipt, "EpochSettled")
    return {
        "net": net,
        "miners": balances(net, ms),
        "validators": balances(net, vs),
        "consensus": list(net.contract.functions.lastConsensus().call()[1])[:4],
        "settled": settled.args,
        "carried_before": carried_before,
    }


def test_outlier_validator_is_clipped(chain: Any) -> None:
    base = _settle_once(chain, with_outlier=False)
    out = _settle_once(chain, with_outlier=True)

    # consensus with the outlier stays inside the honest validators' range per miner
    for uid in range(4):
        honest = [h[uid] for h in HONEST]
        assert min(honest) <= out["consensus"][uid] <= max(honest)
        assert min(honest) <= base["consensus"][uid] <= max(honest)
    # miner payouts move at most by what the honest spread allows: bound the change
    # by the payout difference implied by the honest min/max of each miner
    miner_pool = out["settled"].minerTotal + 10  # rounding slack
    for uid in range(4):
        honest = [h[uid] for h in HONEST]
        spread = (max(honest) - min(honest)) / sum(min(h[u] for h in HONEST) for u in range(4))
        assert abs(out["miners"][uid] - base["miners"][uid]) <= spread * miner_pool + 1
    # miner 3 (the outlier's favourite) cannot be pushed above the honest maximum share
    assert out["miners"][3] <= base["miners"][3] * 1.2

    # the outlier earns strictly less than every honest validator (same stake)
    honest_pay = out["validators"][:3]
    assert out["validators"][3] < min(honest_pay)
    # and the miner ranking is the honest one
    assert out["miners"][0] > out["miners"][1] > out["miners"][2] > out["miners"][3]
    for res in (base, out):
        s = res["settled"]
        assert s.minerTotal + s.validatorTotal + s.carried == s.emission + res["carried_before"]
        assert_solvent(res["net"])


def test_stake_weighted_median(net: Net) -> None:
    """A single validator holding a stake majority decides the consensus."""
    _ms, vs = setup_members(net, 2, 3, vstakes=[10_000, 3_000, 3_000])
    net.run_epoch(
        {
            vs[0]: ([0, 1], [700_000, 300_000]),
            vs[1]: ([0, 1], [100_000, 900_000]),
            vs[2]: ([0], [100_000]),  # missing uid 1 counts as 0
        }
    )
    assert list(net.contract.functions.lastConsensus().call()[1])[:2] == [700_000, 300_000]


# ------------------------------------------------------------------- conservation


def test_emission_conservation_over_epochs(chain: Any) -> None:
    # pool not a multiple of the emission: the last epochs drain it
    net = deploy_net(
        chain, emissionPerEpoch=999_983, validatorShareBps=1_333, pool=3 * 999_983 + 77_777
    )
    f = net.contract.functions
    ms, vs = setup_members(net, 5, 3, vstakes=[7_001, 3_337, 5_003])
    rounds = [
        {
            vs[0]: ([0, 1, 2, 3, 4], [333_333, 111_111, 77_777, 1, 999_999]),
            vs[1]: ([4, 0, 2], [123_457, 300_001, 70_001]),
            vs[2]: ([0, 1, 2, 3, 4], [310_000, 150_000, 80_000, 3, 650_000]),
        },
        {},  # nobody reveals: everything is carried
        {vs[1]: ([1, 3], [7, 13])},
        {vs[0]: ([0, 2], [1, 1]), vs[2]: ([0, 2, 4], [2, 5, 7])},
        {vs[0]: ([0], [SCALE])},  # pool exhausted by now: only carried money moves
    ]
    total_paid = 0
    carried_seen = []
    for votes in rounds:
        carried_before = f.carried().call()
        pool_before = f.emissionPool().call()
        bal_before = sum(balances(net, ms + vs))
        _, receipt = net.run_epoch(votes) if votes else _empty_epoch(net)
        (s,) = net.events(receipt, "EpochSettled")
        assert s.args.emission == min(999_983, pool_before)
        assert f.emissionPool().call() == pool_before - s.args.emission
        assert (
            s.args.minerTotal + s.args.validatorTotal + s.args.carried
            == s.args.emission + carried_before
        )
        assert f.carried().call() == s.args.carried
        paid = sum(balances(net, ms + vs)) - bal_before
        assert paid == s.args.minerTotal + s.args.validatorTotal
        rewarded = sum(e.args.amount for e in net.events(receipt, "Rewarded"))
        assert rewarded == paid
        if not votes:
            assert paid == 0
            assert s.args.carried == s.args.emission + carried_before
        total_paid += paid
        carried_seen.append(s.args.carried)
        assert_solvent(net)
    assert f.emissionPool().call() == 0
    assert total_paid + f.carried().call() == 3 * 999_983 + 77_777
    assert carried_seen[0] > 0  # division remainders really happened


def _empty_epoch(net: Net) -> tuple[int, Any]:
    epoch = net.advance_to_next_epoch()
    net.to_settle_phase(epoch)
    return epoch, net.tx(net.contract.functions.settle(epoch), net.accounts[0])


# -------------------------------------------------------------------------- claims


def test_claim_pays_exact_balance(net: Net) -> None:
    f = net.contract.functions
    ms, vs = setup_members(net, 2, 2)
    net.run_epoch({vs[0]: ([0, 1], [600_000, 400_000]), vs[1]: ([0, 1], [500_000, 500_000])})
    for acct in (ms[0], vs[1]):
        owed = f.balanceOf(acct.address).call()
        assert owed > 0
        before = net.w3.eth.get_balance(acct.address)
        r = net.tx(f.claim(), acct)
        (ev,) = net.events(r, "Claimed")
        assert (ev.args.account, ev.args.amount) == (acct.address, owed)
        assert net.w3.eth.get_balance(acct.address) == before + owed - net.fee(r)
        assert f.balanceOf(acct.address).call() == 0
        assert net.fails(f.claim(), acct) == ("NothingToClaim", ())
    assert net.fails(f.claim(), net.accounts[19]) == ("NothingToClaim", ())
    assert_solvent(net)


# ----------------------------------------------------------------- aggregation set


def test_aggregation_set(net: Net) -> None:
    f = net.contract.functions
    ms, vs = setup_members(net, 5, 1)
    uids, addrs = f.aggregationSet().call()
    assert list(uids) == [0, 1, 2]  # no consensus yet: active miners in uid order
    assert list(addrs) == [m.address for m in ms[:3]]
    net.run_epoch({vs[0]: ([0, 1, 2, 3, 4], [10, 500, 10, 900, 500])})
    uids, addrs = f.aggregationSet().call()
    assert list(uids) == [3, 1, 4]  # by weight, ties -> lower uid
    assert list(addrs) == [ms[3].address, ms[1].address, ms[4].address]
    _epoch, weights = f.lastConsensus().call()
    assert list(weights)[:5] == [10, 500, 10, 900, 500]
    assert len(weights) == BASE_PARAMS["maxMiners"]
    # a miner that leaves drops out of the set
    net.tx(f.requestUnstake(), ms[3])
    assert list(f.aggregationSet().call()[0]) == [1, 4, 0]
