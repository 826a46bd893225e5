"""The real miner and validator services on an in-memory chain and mesh.

Three miners and a validator train together, a garbage-publishing registered
peer is ignored, a fourth miner joins late and catches up from a checkpoint
plus replayed window records, and a miner stopped mid-run resumes from its
local checkpoint; afterwards every node holds the same θ.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chain.client import Role
from chain.errors import ChainUnavailableError
from node.runtime.chainview import AsyncChain
from node.runtime.miner import MinerService
from tests.support.daemons import SPEC, MemNet
from tests.support.keys import identity

# real-time windows of a few seconds: the serial phase of `make test` (tests/conftest.py)
pytestmark = [pytest.mark.slow, pytest.mark.wallclock]


def _digests_at(services: list, window: int) -> set[str]:
    return {p["param_digest"] for s in services for p in s.history if p["window"] == window}


async def _garbage_peer(net: MemNet, stop: asyncio.Event) -> None:
    """A registered miner that announces random bytes every window."""
    who = identity(66)
    net.chain.client(who.address_hex).register(Role.MINER, b"garbage", 10**18)
    mesh = net.network.node(who, net.spec.run)
    await mesh.start()
    try:
        while not stop.is_set():
            await mesh.announce(net.chain.window(), os.urandom(3000))
            await asyncio.sleep(0.5)
    finally:
        await mesh.stop()


async def test_network_trains_identically_and_a_late_joiner_and_a_restart_catch_up(
        tmp_path: Path) -> None:
    net = MemNet(tmp_path)
    ticker = asyncio.create_task(net.tick())
    garbage_stop = asyncio.Event()
    garbage = asyncio.create_task(_garbage_peer(net, garbage_stop))
    try:
        miners = [net.miner(f"m{i}", i) for i in range(3)]
        for m in miners:
            net.start(m)
        net.start(net.validator("v", 10))
        await net.until(lambda: all(len(m.history) >= 2 for m in miners), 120, "two windows")

        late = net.miner("late", 3)
        net.start(late)
        await net.until(lambda: any(e["event"].startswith("synced") for e in late.timeline),
                        60, "the late joiner to sync")
        synced = next(e["event"] for e in late.timeline if e["event"].startswith("synced"))
        assert "checkpoint of window" in synced
        assert "from 0x" in synced

        # a node whose θ drifted (a missed envelope, a bit flip) notices from its peers'
        # envelopes and replays from their records
        def drift_until_noticed() -> bool:
            if any(e["event"].startswith("diverged") for e in miners[2].timeline):
                return True
            if miners[2].state == "waiting":  # (training restores θ at its end)
                theta = miners[2].engine.full_params()
                theta[0].add_(1e-3)
                miners[2].engine.load_params(theta)
            return False

        await net.until(drift_until_noticed, 60, "m2 to notice its divergence")

        await net.halt("m1")  # what SIGTERM does: abandon the window, flush, leave
        assert net.services["m1"].state == "stopped"
        stopped_at = net.services["m1"].window
        restarted = net.miner("m1", 1)
        net.start(restarted)
        await net.until(lambda: len(restarted.history) >= 2 and len(late.history) >= 2, 120,
                        "the restarted miner and the late joiner to apply two windows")
        resumed = next(e["event"] for e in restarted.timeline if e["event"].startswith("synced"))
        # its own flushed state, unless a peer has published a newer checkpoint meanwhile
        print("restart:", resumed)
        assert (f"local checkpoint of window {stopped_at}" in resumed
                or ("checkpoint of window" in resumed and "from 0x" in resumed)), resumed

        everyone = [miners[0], miners[2], late, restarted, net.services["v"]]
        last = min(s.history[-1]["window"] for s in everyone)
        assert len(_digests_at(everyone, last)) == 1, "θ differs between nodes"
        published = [p for p in late.history if p["compression_ratio"]]
        assert published, ("the late joiner never contributed",
                           [e["event"] for e in late.timeline][-12:])
        losses = [p["heldout_loss"] for p in miners[0].history]
        assert losses[-1] < losses[0]
        # bytes that are not an envelope cannot be attributed: the peer counts as missing
        garbage_uid = net.chain.client(identity(66).address_hex).role_of(
            identity(66).address_hex).uid
        row = next(r for r in net.services["v"].scores() if r["uid"] == garbage_uid)
        assert row["status"] == "missing"
        assert row["score"] == 0.0
        assert row["weight"] == 0.0
        assert all(p["contributions"] <= 4 for p in miners[0].history)
    finally:
        garbage_stop.set()
        await net.close()
        await garbage
        ticker.cancel()


async def test_overlapped_windows_keep_theta_identical_score_honest_miners_and_catch_up(
        tmp_path: Path) -> None:
    # overlap on: window w trains from θ after <= w - 2 while w - 1's contributions travel
    net = MemNet(tmp_path, spec=dataclasses.replace(SPEC, overlap=True, score_warmup=0))
    ticker = asyncio.create_task(net.tick())
    try:
        miners = [net.miner(f"m{i}", i) for i in range(2)]
        for m in miners:
            net.start(m)
        validator = net.validator("v", 10)
        net.start(validator)
        await net.until(lambda: all(len(m.history) >= 2 for m in miners), 120, "two windows")
        late = net.miner("late", 3)
        net.start(late)
        uids = {m.uid for m in miners}

        def honest_scored_in_step() -> bool:
            rows = validator.report.rows if validator.report else []
            return {r.uid for r in rows if r.status == "scored" and r.sync == 1.0} >= uids

        await net.until(honest_scored_in_step, 60, "honest miners scored on the current θ")
        await net.halt("m1")  # SIGTERM: flush θ (labelled with the first window not applied)
        restarted = net.miner("m1", 1)
        net.start(restarted)
        await net.until(lambda: len(late.history) >= 2 and len(restarted.history) >= 2, 120,
                        "the late joiner and the restarted miner to apply two windows")
        resumed = next(e["event"] for e in restarted.timeline if e["event"].startswith("synced"))
        assert "checkpoint of window" in resumed, resumed
        everyone = [miners[0], restarted, late, validator]
        last = min(s.history[-1]["window"] for s in everyone)
        assert len(_digests_at(everyone, last)) == 1, "θ differs between nodes"
        for s in everyone:  # the window applied is the one before the window trained
            assert s.applied == s.window - 2
        for s in (miners[0], restarted):  # none skipped
            applied = [p["window"] for p in s.history]
            assert applied == list(range(applied[0], applied[0] + len(applied)))
        # trained and published w + 1 before applying w
        order = [(e["event"].split()[0], e["window"]) for e in miners[0].timeline]
        overlapped = [w for kind, w in order if kind == "applied"
                      and ("published", w + 1) in order
                      and order.index(("published", w + 1)) < order.index(("applied", w))]
        assert overlapped, order
        assert any(p["compression_ratio"] for p in late.history), "the late joiner never trained"
        assert max(p["contributions"] for p in miners[0].history) >= 2  # others' counted
        assert not any(e["event"].startswith("diverged") for s in everyone for e in s.timeline)
    finally:
        await net.close()
        ticker.cancel()


class _FlakyClient:
    """A chain client whose first calls fail as an unreachable RPC endpoint would."""

    def __init__(self, inner: object, failures: int) -> None:
        self._inner = inner
        self.failures = failures

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: object) -> object:
            if self.failures > 0:
                self.failures -= 1
                raise ChainUnavailableError("connection refused (injected)")
            return attr(*args)

        return call


async def test_a_miner_waits_out_an_unreachable_chain(tmp_path: Path) -> None:
    net = MemNet(tmp_path)
    ticker = asyncio.create_task(net.tick())
    try:
        who = identity(5)
        flaky = _FlakyClient(net.chain.client(who.address_hex), failures=3)
        miner = MinerService(net.config("flaky"), net.spec, net.assets, who,
                             net.network.node(who, net.spec.run),
                             AsyncChain(flaky, net.lock), stake=10**18)  # type: ignore[arg-type]
        net.start(miner)
        await net.until(lambda: miner.state in ("training", "waiting"), 60,
                        "the miner to register and start its windows")
        retries = [e for e in miner.timeline if "chain unreachable" in e["event"]]
        assert len(retries) == 3
        assert miner.uid >= 0
    finally:
        await net.close()
        ticker.cancel()


@dataclass
class _LateOnce:
    skipped: int = -1  # the window the miner let pass untrained
    folds: dict[int, int | None] = field(default_factory=dict)  # window -> newest fold tag


def _late_once(miner: MinerService) -> _LateOnce:
    """Make `miner` let its first whole window from window 1 on pass untrained, as when it
    reaches a window late, and note its newest public fold after each window's finish."""
    seen = _LateOnce()
    train, finish = miner.work, miner.finish

    async def work(window: int, whole: bool) -> Any:
        if seen.skipped < 0 and window >= 1 and whole:
            seen.skipped = window
            return None
        return await train(window, whole)

    async def finish_then_note(window: int, started: float, ended: float, result: Any) -> None:
        await finish(window, started, ended, result)
        seen.folds[window] = miner.engine._trainer.public.last  # type: ignore[attr-defined]

    miner.work, miner.finish = work, finish_then_note  # type: ignore[method-assign]
    return seen


async def test_miners_of_a_public_second_moment_run_fold_each_windows_public_batch(
        tmp_path: Path) -> None:
    """A run with a public second moment: every miner folds the public batch of each
    window it trains, the validator of each window it replays, and θ stays identical.
    A miner that reaches a window too late to train it still folds it; one that restarts
    comes back with its estimate (its local checkpoint keeps it, catch-up folds the
    windows it replays), not an empty one, and so does a validator."""
    spec = dataclasses.replace(SPEC, public_second_moment=0.9, score_warmup=0)
    net = MemNet(tmp_path, spec=spec)
    ticker = asyncio.create_task(net.tick())
    try:
        miners = [net.miner(f"m{i}", i) for i in range(2)]
        late = _late_once(miners[0])
        for m in miners:
            net.start(m)
        validator = net.validator("v", 10)
        net.start(validator)
        await net.until(lambda: all(len(m.history) >= 2 for m in miners), 120, "two windows")
        # its history grows once the window is scored, after the replays that fold
        await net.until(lambda: validator.scorer.evaluator.public is not None
                        and len(validator.history) >= 1, 60,
                        "the validator to replay and finish a window")
        folded = validator.scorer.evaluator.public
        assert folded is not None
        assert folded.windows >= 1
        for m in miners:
            trained = sum(1 for p in m.history if p["train_loss"] is not None)
            public = m.engine._trainer.public  # type: ignore[attr-defined]
            assert public is not None
            assert public.windows >= max(1, trained), m.history
        await net.until(lambda: late.skipped in late.folds, 60, "m0 to let a window pass")
        assert late.folds[late.skipped] == spec.first_step(late.skipped)
        assert all(p["train_loss"] is None for p in miners[0].history
                   if p["window"] == late.skipped)
        await net.halt("m1")  # what SIGTERM does: abandon the window, flush, leave
        before = miners[1].engine._trainer.public  # type: ignore[attr-defined]
        restarted = net.miner("m1", 1)
        net.start(restarted)
        await net.until(lambda: sum(1 for p in restarted.history if p["train_loss"]) >= 1, 120,
                        "the restarted miner to train a window")
        after = restarted.engine._trainer.public  # type: ignore[attr-defined]
        # the count goes on from where it stopped (an empty estimate would count from 0)
        assert after.windows >= before.windows + 1, [e["event"] for e in restarted.timeline]
        assert after.last > before.last
        # so does a validator: its scoring folds into its engine's estimate
        await net.halt("v")
        before = validator.scorer.evaluator.public
        validator = net.validator("v", 10)
        net.start(validator)
        await net.until(lambda: len(validator.history) >= 1, 60,
                        "the restarted validator to score a window")
        after = validator.scorer.evaluator.public
        assert after is not None
        assert after.windows >= before.windows + 1, [e["event"] for e in validator.timeline]
        everyone = [miners[0], restarted, validator]
        last = min(s.history[-1]["window"] for s in everyone)
        assert len(_digests_at(everyone, last)) == 1, "θ differs between nodes"
    finally:
        await net.close()
        ticker.cancel()
