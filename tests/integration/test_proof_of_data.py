"""The proof of assigned data by replay, with the real validator (tests/support/attackers).

Miners of a run with `inner_reset` start each window's AdamW afresh, so the validator
can replay their inner steps from θ_global; an update trained on other batches does
not match the replay of its own assignment better than the replays of others'.
"""

from __future__ import annotations

from pathlib import Path

import torch

from node.engine.config import EngineConfig
from node.engine.inner import InnerTrainer
from node.outer.step import params_digest
from protocol.envelope import BaseModel, seal
from tests.support.attackers import HONEST, RUN, Harness, HarnessConfig, Miner
from validator import scoring


def _evidence(reason: str) -> float:
    return float(reason.split("e=")[1])


def test_the_replayed_proof_tells_assigned_data(tmp_path: Path) -> None:
    h = Harness(HarnessConfig(), [HONEST] * 3 + ["wrongdata"], tmp_path / "v.db")
    bf16 = h.miners[2]  # trains under bf16 autocast; the validator replays in fp32
    assert bf16.model is not None
    bf16.trainer = InnerTrainer(bf16.model, h.inner_config(), EngineConfig(precision="bf16"))
    honest = {m.uid for m in h.miners if m.kind == HONEST}
    threshold = h.scoring_config().replay_threshold
    for w in range(3):
        rows = {r.uid: r for r in h.run_window(w).rows}
        for uid, row in rows.items():
            assert row.status == "scored", row
            if uid in honest:
                assert row.reason.startswith("b=+1"), row
                assert _evidence(row.reason) >= threshold, row
            else:
                assert row.reason.startswith("b=-1"), row
                assert _evidence(row.reason) < threshold, row
    states = h.validator.state.miners()
    assert all(states[u].bma > 0 for u in honest)
    wrong = next(m.uid for m in h.miners if m.kind == "wrongdata")
    assert states[wrong].bma < 0
    assert states[wrong].score == 0.0  # the gate: no pay without the proof


def test_a_run_that_keeps_the_inner_state_proves_by_loss(tmp_path: Path) -> None:
    """Kept AdamW moments hold a miner's private history: nothing to replay, so the
    validator falls back to the loss-based bit (no replay evidence in its rows)."""
    h = Harness(HarnessConfig(inner_reset=False), [HONEST] * 3, tmp_path / "v.db")
    assert not h.validator.cfg.scoring.replays
    rows = h.run_window(0).rows
    assert rows
    assert all(r.status == "scored" and "e=" not in r.reason for r in rows), rows


def test_an_update_on_an_older_base_is_neither_proven_nor_disproven(tmp_path: Path) -> None:
    """A miner one window behind builds on θ_{w−1}: its steps cannot be replayed from
    θ_global, so its bit is 0 (no evidence) rather than a −1 that would punish lag."""
    h = Harness(HarnessConfig(), [HONEST] * 4, tmp_path / "v.db")
    h.run_window(0)
    lagging = h.miners[3]
    plain_seal = h._seal

    def seal_on_older_base(m: Miner, window: int, payload: bytes) -> bytes:
        if m is not lagging:
            return plain_seal(m, window, payload)
        assert h.previous_theta is not None
        base = BaseModel(h.step - 1, params_digest(h.previous_theta))
        return seal(m.identity, run_id=RUN, window=window, base=base, codec=h.codec,
                    manifest=h.manifest, payload=payload)

    h._seal = seal_on_older_base  # type: ignore[method-assign]
    rows = {r.uid: r for r in h.run_window(1).rows}
    assert rows[lagging.uid].status == "scored"
    assert rows[lagging.uid].sync == 0.5
    assert rows[lagging.uid].reason == "b=+0", rows[lagging.uid]
    assert all(r.reason.startswith("b=+1 e=") for u, r in rows.items() if u != lagging.uid)


def test_the_validator_replays_a_public_second_moment_exactly(tmp_path: Path) -> None:
    """With a public second moment, miners fold each window's public batch before training
    the window and the validator folds it before replaying: the validator's replay of an
    fp32 miner is that miner's Δ bit for bit, window after window, and the proof holds."""
    h = Harness(HarnessConfig(public_second_moment=0.9), [HONEST] * 3, tmp_path / "v.db")
    sent: dict[tuple[int, int], list[torch.Tensor]] = {}
    plain_train = h._train

    def keep(m: Miner, window: int, data_uid: int) -> list[torch.Tensor]:
        delta = plain_train(m, window, data_uid)
        sent[m.uid, window] = [d.clone() for d in delta]
        return delta

    h._train = keep  # type: ignore[method-assign]
    cfg = h.scoring_config()
    for w in range(2):
        theta = [p.detach().clone() for p in h.theta.parameters()]
        rows = h.run_window(w).rows
        assert rows
        assert all(r.reason.startswith("b=+1") for r in rows), rows
        ev = h.validator.evaluator
        assert ev.public is not None
        assert ev.public.windows == w + 1
        for m in h.miners:
            batches = scoring.assigned_batches(h.tokens, cfg, w, m.uid)
            replayed = ev.replay(theta, batches, cfg.inner, w * cfg.inner_steps)
            assert all(torch.equal(a, b) for a, b in zip(replayed, sent[m.uid, w], strict=True))


def test_a_restarted_validator_disproves_nobody_until_its_public_second_moment_settles(
        tmp_path: Path) -> None:
    """A validator that starts anew mid-run (it joined late or lost its data directory;
    a daemon that restarts keeps its estimate) starts its public second moment from nothing, so
    its replays differ from what honest miners (who folded every window) trained. Until
    its estimate holds all but `public_settle_weight` of the run's, it gives no −1: the
    wrong-data miner it disproved before gets 0, and so does any honest one whose
    evidence falls short; the evidence is still recorded."""
    h = Harness(HarnessConfig(public_second_moment=0.9), [HONEST] * 3 + ["wrongdata"],
                tmp_path / "v.db")
    wrong = h.miners[-1].uid
    bits = {r.uid: r.reason[:4] for r in h.run_window(0).rows}
    assert bits == {0: "b=+1", 1: "b=+1", 2: "b=+1", wrong: "b=-1"}
    h.validator.state.close()
    h.validator = h.make_validator()
    for w in (1, 2):
        rows = h.run_window(w).rows
        assert len(rows) == 4
        assert all(" e=" in r.reason for r in rows), rows
        assert not any(r.reason.startswith("b=-1") for r in rows), rows
        assert next(r for r in rows if r.uid == wrong).reason.startswith("b=+0"), rows
