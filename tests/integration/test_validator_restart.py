"""Restart, chain outage and replay: the validator posts exactly once and agrees
with an independent validator on the same inputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from chain.commitment import weights_commitment
from chain.errors import ChainUnavailableError
from chain.memory import MemoryChainClient
from tests.support.attackers import HONEST, Harness, HarnessConfig
from validator.scorer import GlobalView
from validator.state import ValidatorState

CFG = HarnessConfig(inner_steps=3)


class CountingClient:
    """Wraps a MemoryChainClient: counts commits/reveals; `down` makes it unreachable."""

    def __init__(self, inner: MemoryChainClient) -> None:
        self.inner = inner
        self.down = False
        self.commits = 0
        self.reveals = 0

    def __getattr__(self, name: str) -> Any:
        if self.down:
            raise ChainUnavailableError(f"{name}: endpoint unreachable")
        return getattr(self.inner, name)

    @property
    def address(self) -> str:
        return self.inner.address

    def commit_weights(self, epoch: int, commitment: bytes) -> None:
        if self.down:
            raise ChainUnavailableError("commit: endpoint unreachable")
        self.inner.commit_weights(epoch, commitment)
        self.commits += 1

    def reveal_weights(self, epoch: int, uids: Sequence[int], weights: Sequence[int],
                       salt: bytes) -> None:
        if self.down:
            raise ChainUnavailableError("reveal: endpoint unreachable")
        self.inner.reveal_weights(epoch, uids, weights, salt)
        self.reveals += 1


def _harness(tmp_path: Path) -> tuple[Harness, CountingClient]:
    h = Harness(CFG, [HONEST, HONEST, "absent"], tmp_path / "v.db")
    client = CountingClient(h.vclient)
    h.validator = h.make_validator(client)
    return h, client


def test_restart_between_scoring_and_posting_posts_once(tmp_path: Path) -> None:
    h, _ = _harness(tmp_path)
    h.run_window(0, post=False)  # scored and persisted, then "killed" before posting
    before = h.validator.state.miners()
    assert [p.status for p in h.validator.state.plans()] == ["planned"]
    h.validator.state.close()

    client2 = CountingClient(h.vclient)
    h.validator = h.make_validator(client2)  # restart on the same database
    assert h.validator.state.miners() == before
    again = h.validator.process_window(0, GlobalView(list(h.theta.parameters()), h.base()), 0.5)
    assert again.replayed  # not scored twice
    h.validator.post()
    h.validator.post()
    assert client2.commits == 1
    assert h.validator.state.plans()[0].status == "committed"
    address = h.vclient.address
    assert address in h.chain.votes[0]
    h.run_window(1)  # chain moves into epoch 1's first window: the reveal window
    h.run_window(2)
    assert client2.reveals == 1
    assert h.chain.votes[0][address].revealed
    statuses = {p.epoch: p.status for p in h.validator.state.plans()}
    assert statuses[0] == "revealed"


def test_chain_outage_posts_after_return_without_loss_or_doubling(tmp_path: Path) -> None:
    h, client = _harness(tmp_path)
    h.run_window(0, post=False)  # plan for epoch 0 made
    client.down = True
    assert h.validator.post() == []  # the chain is down: nothing sent, nothing recorded
    assert client.commits == 0
    assert h.validator.state.plans()[0].status == "planned"
    client.down = False
    h.validator.post()
    assert client.commits == 1
    # a long outage across epoch 1's commit phase: the plan carries over to epoch 2
    h.run_window(1)
    client.down = True
    h.run_window(2)  # plans epoch 1 (chain in window 3), cannot post
    h.run_window(3)
    client.down = False
    h.run_window(4)
    h.validator.post()
    statuses = {p.epoch: p.status for p in h.validator.state.plans()}
    assert statuses[0] == "revealed"
    assert statuses[1] == "missed"
    assert statuses[2] == "committed"
    plans = {p.epoch: p for p in h.validator.state.plans()}
    assert plans[2].uids  # the epoch-1 weights were posted for epoch 2, not lost
    assert client.commits == 2  # epoch 0 and epoch 2: never twice for one epoch
    assert client.reveals == 1


def test_two_validators_score_a_window_identically(tmp_path: Path) -> None:
    h = Harness(CFG, [HONEST, HONEST, HONEST, "noise", "zero"], tmp_path / "a.db")
    views: list[GlobalView] = []

    def snapshot() -> None:
        views.append(GlobalView([p.detach().clone() for p in h.theta.parameters()], h.base()))

    first = h.run_window(0, before_score=snapshot)
    h.db = tmp_path / "b.db"
    other = h.make_validator()
    second = other.process_window(0, views[0], deadline=0.5)
    assert first.rows == second.rows
    assert ValidatorState(tmp_path / "b.db", "advtest").miners() == h.validator.state.miners()
    assert torch.equal(views[0].params[0], views[0].params[0])


def test_crash_right_after_commit_does_not_send_it_again(tmp_path: Path) -> None:
    h, client = _harness(tmp_path)
    h.run_window(0, post=False)
    plan = h.validator.state.plans()[0]
    # the commit reached the chain, then the process died before recording it
    client.inner.commit_weights(plan.epoch, weights_commitment(
        client.address, plan.epoch, plan.uids, plan.weights, plan.salt))
    h.validator.post()
    assert client.commits == 0  # recognised on chain, not sent twice
    assert h.validator.state.plans()[0].status == "committed"
