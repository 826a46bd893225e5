"""The per-window loop: gather → check → score → rate → persist → post weights.

`Validator.process_window` is idempotent per window (a recorded window is not
scored again) and writes everything in one transaction; `Validator.post`
drives the commit-reveal state machine and may be called as often as wanted:
each call does what the chain's phase allows, survives `ChainError`s, and
never sends a second, different vote for an epoch.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from eth_utils import to_canonical_address

from chain.client import ChainClient
from chain.errors import ChainError, ChainUnavailableError
from node.engine.data import derive_seed
from node.engine.evaluator import Evaluator
from node.outer.aggregate import median_norms
from protocol.envelope import BaseModel, Expectation, read_unverified
from protocol.errors import ProtocolError
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.sparse import SparseTensor, compress
from protocol.spec import CodecSpec
from protocol.window import Schedule
from validator import proof, rating, scoring
from validator.checks import Accepted, CheckContext, check_window, scale_check
from validator.copying import (
    CopyFlag,
    Fingerprint,
    detect_copies,
    detect_stale_copies,
    fingerprint,
    flag_when,
)
from validator.errors import ConfigError, CopyRejected, Rejection
from validator.posting import post_plans
from validator.source import Arrival, ContributionSource
from validator.state import MinerState, Plan, ResultRow, ValidatorState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidatorConfig:
    run_id: str
    validator_seed: int
    scoring: scoring.ScoringConfig
    codec: CodecSpec
    copy_threshold: float = 0.4
    copy_sample_mod: int = 1
    copy_windows: int = 4  # earlier windows a contribution is also compared with
    scale_factor: float = 5.0
    slash_factor: float = 0.75
    max_evals: int | None = None  # time budget in evaluations per window
    commit_phase: float = 0.0  # two-phase publication (RunSpec.commit_phase); 0: off
    policy: rating.WeightPolicy = field(default_factory=rating.WeightPolicy)
    limits: Limits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if not 0.0 < self.copy_threshold <= 1.0 or self.scale_factor <= 1.0:
            raise ConfigError("copy_threshold in (0, 1], scale_factor > 1")
        if not 0.0 <= self.slash_factor <= 1.0:
            raise ConfigError("slash_factor must lie in [0, 1]")
        if self.max_evals is not None and self.max_evals < 1:
            raise ConfigError("max_evals must be >= 1")


@dataclass(frozen=True)
class GlobalView:
    """θ_global at the start of the window being scored, and its fingerprint."""

    params: Sequence[torch.Tensor]
    base: BaseModel


HELPFUL_FRACTION = 0.1
GLOBAL_STEP = -1  # the uid that copy flags name when an update echoes the last outer step


def _named_signer(data: bytes, limits: Limits) -> bytes | None:
    """The signer an envelope's header names (unverified: `check_window` verifies)."""
    try:
        return read_unverified(data, limits)[0].signer
    except ProtocolError:
        return None


def helpful_uids(gains: dict[int, float]) -> list[int]:
    """Uids whose random-batch gain is positive and at least HELPFUL_FRACTION of the
    median positive gain: updates that barely move the loss (noise at an honest norm)
    are kept out of the aggregate and of the proof-of-data reference."""
    positive = sorted(g for g in gains.values() if g > 0.0)
    if not positive:
        return []
    floor = HELPFUL_FRACTION * positive[len(positive) // 2]
    return sorted(u for u, g in gains.items() if g > 0.0 and g >= floor)


@dataclass
class Evaluated:
    score: scoring.LossScore
    sync: float
    bit: float  # proof-of-assigned-data bit
    evidence: float | None = None  # the replay evidence behind the bit (replay proofs)

    def reason(self) -> str:
        return f"b={self.bit:+.0f}" + ("" if self.evidence is None
                                       else f" e={self.evidence:+.2f}")


@dataclass
class WindowReport:
    window: int
    submitted: int
    evaluated: int
    rows: list[ResultRow]
    accepted: dict[int, Accepted] = field(default_factory=dict)  # passed every check
    replayed: bool = False  # loaded from state, not scored now

    def positive(self) -> list[int]:
        """Uids whose update, applied alone, clearly lowered the random-batch loss."""
        return helpful_uids({r.uid: r.s_rand for r in self.rows
                             if r.status == "scored" and r.s_rand is not None})

    def aggregation_inputs(self, allowed: set[int] | None = None
                           ) -> list[tuple[bytes, Sequence[SparseTensor]]]:
        """(signer, tensors) of the accepted, positively scored miners (∩ `allowed`)."""
        keep = [u for u in self.positive() if allowed is None or u in allowed]
        return [(self.accepted[u].signer, self.accepted[u].tensors) for u in keep
                if u in self.accepted]


class Validator:
    def __init__(self, config: ValidatorConfig, chain: ChainClient, source: ContributionSource,
                 state: ValidatorState, tokens: np.ndarray, evaluator: Evaluator,
                 salt_source: Callable[[int], bytes] = os.urandom) -> None:
        """`evaluator` is the engine's scratch model (`Engine.evaluator()`): scoring loads
        θ_global minus one update into it, never into the engine's own θ."""
        self.cfg = config
        self.chain = chain
        self.source = source
        self.state = state
        self.tokens = tokens
        self.manifest = evaluator.manifest
        self.evaluator = evaluator
        self.salt_source = salt_source
        self._miners: dict[bytes, int] = {}
        self._wpe: int | None = None
        self._recent: dict[int, list[Fingerprint]] = {}  # window -> fingerprints (copies)
        self._last_view: tuple[int, list[torch.Tensor]] | None = None  # (window, θ)
        self._sched: Schedule | None = None

    # --- registration -----------------------------------------------------------------
    def registered(self) -> dict[bytes, int]:
        """address -> uid from the chain; the last good answer while it is down."""
        try:
            self._miners = {to_canonical_address(m.address): m.uid for m in self.chain.miners()}
        except ChainError as exc:
            log.warning("miners(): %s; using the last known set", exc)
        return self._miners

    # --- scoring --------------------------------------------------------------------
    def process_window(self, window: int, view: GlobalView, deadline: float) -> WindowReport:
        if self.state.has_window(window):
            return WindowReport(window, 0, 0, self.state.results(window), replayed=True)
        miners = self.registered()
        arrivals = self.source.contributions(window)
        accepted, failures = self._screen(window, view, miners, arrivals, deadline)
        states = self.state.miners()
        for uid in miners.values():
            states.setdefault(uid, MinerState(uid))
        chosen = self._budget(accepted, states, window)
        rows, scores = self._evaluate(window, view, accepted, chosen, states)
        rows += self._rate(window, scores, states)
        for uid in sorted(set(miners.values()) - set(accepted)):
            st = states[uid]
            st.score = rating.slash(st.score, self.cfg.slash_factor)
            err = failures.get(uid)
            status, reason = ("rejected", err.reason) if err else ("missing", "missing")
            rows.append(ResultRow(window, uid, status, reason, None, None, None, st.score))
        plan = self._plan_for(window, states)
        self.state.save_window(window, states.values(), rows, len(arrivals), len(scores), plan)
        self._last_view = (window, [p.detach().clone() for p in view.params])
        return WindowReport(window, len(arrivals), len(scores), sorted(rows, key=lambda r: r.uid),
                            accepted={u: accepted[u] for u in chosen})

    def _screen(self, window: int, view: GlobalView, miners: dict[bytes, int],
                arrivals: Sequence[Arrival], deadline: float
                ) -> tuple[dict[int, Accepted], dict[int, Rejection]]:
        """The cheap checks, the scale gate and copy detection: what is left to score,
        and why each refused miner was refused."""
        expect = Expectation(self.cfg.run_id, window, self.cfg.codec, self.manifest)
        ctx = CheckContext(expect, miners, deadline, self.cfg.limits,
                           self._committed(window, miners, arrivals))
        accepted, refused = check_window(arrivals, ctx)
        failures: dict[int, Rejection] = {}
        for r in refused:
            uid = miners.get(r.signer) if r.signer is not None else None
            if uid is not None and uid not in accepted:
                failures.setdefault(uid, r.error)
        accepted, scale_fail = scale_check(accepted, self.cfg.scale_factor)
        failures.update(scale_fail)
        prints = [fingerprint(a.uid, a.arrival.order, a.payload_hash, a.tensors, self.manifest,
                              self.cfg.codec, self.cfg.copy_sample_mod) for a in accepted.values()]
        for uid, flag in self._copies(window, view, prints).items():
            kind = "identical payload" if flag.identical else f"overlap {flag.overlap:.2f}"
            whom = ("the last global step" if flag.original == GLOBAL_STEP
                    else f"uid {flag.original}")
            failures[uid] = CopyRejected(f"{kind} with {whom}{flag_when(flag)}")
            del accepted[uid]
        return accepted, failures

    def _committed(self, window: int, miners: dict[bytes, int],
                   arrivals: Sequence[Arrival]) -> dict[bytes, bytes] | None:
        """signer -> the envelope sha256 it committed to before `window`'s release block,
        for the registered signers among `arrivals`; None when the run has no commit
        phase, or when the chain cannot tell (then no honest miner is refused for it)."""
        if self.cfg.commit_phase == 0.0:
            return None
        signers = {s for s in (_named_signer(a.data, self.cfg.limits) for a in arrivals)
                   if s in miners}  # a forged name costs one read at most: checks verify
        try:
            schedule = self._schedule()
            out: dict[bytes, bytes] = {}
            for signer in sorted(signers):
                c = self.chain.contribution_of(window, "0x" + signer.hex())
                if schedule.committed_in_time(window, c.block, self.cfg.commit_phase):
                    out[signer] = c.digest
        except ChainError as exc:
            log.warning("window %d: commitments unreadable (%s): not checked", window, exc)
            return None
        return out

    def _schedule(self) -> Schedule:
        if self._sched is None:  # deploy-time constants
            p = self.chain.params()
            self._sched = Schedule(self.chain.genesis_block(), p.blocks_per_window,
                                   p.windows_per_epoch)
        return self._sched

    def _rate(self, window: int, scores: dict[int, Evaluated],
              states: dict[int, MinerState]) -> list[ResultRow]:
        """Rating, proof of data and the final score of every evaluated miner."""
        new_ratings = rating.rate_window({u: (states[u].mu, states[u].sigma) for u in scores},
                                         {u: e.score.combined for u, e in scores.items()},
                                         self.cfg.scoring.rank_tolerance)
        helpful = set(helpful_uids({u: e.score.rand for u, e in scores.items()}))
        rows = []
        for uid, e in sorted(scores.items()):
            st = states[uid]
            st.mu, st.sigma = new_ratings[uid]
            st.bma = scoring.proof_step(st.bma, e.bit, self.cfg.scoring.bma_decay)
            st.windows_seen += 1
            data = scoring.data_factor(st.bma, st.windows_seen, self.cfg.scoring)
            # an update that did not clearly lower the random-batch loss (positive and at
            # least HELPFUL_FRACTION of the median gain) earns nothing this window
            helped = 1.0 if uid in helpful else 0.0
            st.score = rating.final_score(st.mu, st.sigma, data, e.sync) * helped
            rows.append(ResultRow(window, uid, "scored", e.reason(), e.score.own,
                                  e.score.rand, e.sync, st.score))
        return rows

    def _global_step(self, window: int, view: GlobalView) -> Fingerprint | None:
        """The fingerprint of the last outer step (θ_{w−1} − θ_w, compressed with the run's
        codec), when this process saw window w − 1: an update that merely echoes it is
        free-riding on everyone's work."""
        if self._last_view is None or self._last_view[0] != window - 1:
            return None
        step = [compress(prev - now.detach(), self.cfg.codec)
                for prev, now in zip(self._last_view[1], view.params, strict=True)]
        return fingerprint(GLOBAL_STEP, -1, b"", step, self.manifest, self.cfg.codec,
                           self.cfg.copy_sample_mod)

    def _copies(self, window: int, view: GlobalView, prints: list[Fingerprint]
                ) -> dict[int, CopyFlag]:
        """This window's copies: of each other, then of another miner's contribution in
        one of the last `copy_windows` windows seen by this process, or of the last
        global step."""
        flags = detect_copies(prints, self.cfg.copy_threshold)
        earlier = [p for w in sorted(self._recent) if w < window for p in self._recent[w]]
        echo = self._global_step(window, view)
        earlier += [echo] if echo is not None else []
        for uid, flag in detect_stale_copies(prints, earlier, self.cfg.copy_threshold).items():
            flags.setdefault(uid, replace(flag, stale=True))
        self._recent[window] = prints
        for w in [w for w in self._recent if w <= window - self.cfg.copy_windows]:
            del self._recent[w]
        return flags

    def _budget(self, accepted: dict[int, Accepted], states: dict[int, MinerState],
                window: int) -> list[int]:
        budget = self.cfg.max_evals
        if budget is None or budget >= len(accepted):
            return sorted(accepted)
        ordinals = {u: rating.ordinal(states[u].mu, states[u].sigma) for u in accepted}
        return rating.sample_by_bins(ordinals, budget,
                                     derive_seed("val-sample", self.cfg.validator_seed, window))

    def _evaluate(self, window: int, view: GlobalView, accepted: dict[int, Accepted],
                  chosen: list[int], states: dict[int, MinerState]
                  ) -> tuple[list[ResultRow], dict[int, Evaluated]]:
        cfg, seed = self.cfg.scoring, self.cfg.validator_seed
        rows: list[ResultRow] = []
        done: dict[int, Evaluated] = {}
        if not chosen:
            return rows, done
        rand = scoring.random_batches(self.tokens, cfg, seed, window)
        ev = self.evaluator
        ev.load(view.params, None, 0.0)
        rand_before = ev.loss(rand)
        norms = median_norms([accepted[u].tensors for u in sorted(accepted)])
        owns = {u: scoring.own_batches(self.tokens, cfg, seed, window, u) for u in chosen}
        own_before = {u: ev.loss(owns[u]) for u in chosen}
        for uid in sorted(accepted):
            if uid not in chosen:
                rows.append(ResultRow(window, uid, "skipped", "budget", None, None, None,
                                      states[uid].score))
                continue
            item = accepted[uid]
            ls = scoring.loss_score(ev, view.params, item.tensors, owns[uid], own_before[uid],
                                    rand, rand_before, cfg, norms)
            if not (math.isfinite(ls.own) and math.isfinite(ls.rand)):
                ls = scoring.LossScore(-1.0, -1.0)
            sync = scoring.sync_score(item.header.base, view.base.step, view.base.digest,
                                      cfg.sync_max_lag)
            if sync == 1.0 and not scoring.base_proven(item.header.base, item.payload_hash,
                                                       view.params, self.manifest):
                sync = 0.0  # names the current θ without holding it
            done[uid] = Evaluated(ls, sync, 0.0)
        self._prove(window, view, accepted, done,
                    proof.LossBatches(owns, own_before, rand, rand_before))
        return rows, done

    def _prove(self, window: int, view: GlobalView, accepted: dict[int, Accepted],
               done: dict[int, Evaluated], batches: proof.LossBatches) -> None:
        """The proof-of-assigned-data bit of every evaluated update (validator/proof.py):
        by replay when the run's miners reset their inner optimizer, else by loss.
        Replays cost training steps: they run only when the proof counts."""
        cfg = self.cfg.scoring
        updates = {u: proof.Update(accepted[u].signer, accepted[u].header.base.step,
                                   accepted[u].tensors) for u in done}
        if cfg.replays and not cfg.proof_of_data:
            return
        if cfg.replays:
            found = proof.replay_proofs(self.evaluator, cfg, self.tokens,
                                        self.cfg.validator_seed,
                                        proof.Window(window, view.params, view.base.step),
                                        updates, self.cfg.codec)
        else:
            helpful = helpful_uids({u: e.score.rand for u, e in done.items()})
            found = proof.loss_proofs(self.evaluator, cfg, view.params, updates,
                                      {u: e.score for u, e in done.items()}, helpful,
                                      batches, self.manifest, self.cfg.codec)
        for u, p in found.items():
            done[u].bit, done[u].evidence = p.bit, p.evidence

    # --- weights ----------------------------------------------------------------------
    def _epoch_to_plan(self, window: int) -> int | None:
        """Weights for epoch E are planned after scoring the window before E's last one
        (the chain is then in E's last window, still E's commit phase)."""
        wpe = self._windows_per_epoch()
        nxt = window + 1
        return nxt // wpe if nxt % wpe == wpe - 1 else None

    def _windows_per_epoch(self) -> int:
        if self._wpe is None:  # deploy-time constant: ask the chain once
            self._wpe = int(self.chain.params().windows_per_epoch)
        return self._wpe

    def _make_plan(self, epoch: int, states: dict[int, MinerState]) -> Plan:
        pairs = rating.weights({u: s.score for u, s in states.items()}, self.cfg.policy)
        return Plan(epoch, tuple(u for u, _ in pairs), tuple(w for _, w in pairs),
                    self.salt_source(32))

    def _plan_for(self, window: int, states: dict[int, MinerState]) -> Plan | None:
        try:
            epoch = self._epoch_to_plan(window)
        except ChainError:
            return None
        if epoch is None or self.state.plan(epoch) is not None:
            return None
        return self._make_plan(epoch, states)

    def post(self) -> list[tuple[int, str]]:
        """Advance every unfinished plan as far as the chain allows; returns (epoch, action)
        (validator/posting.py)."""
        try:
            wpe = self._windows_per_epoch()
        except ChainUnavailableError:
            return []
        return post_plans(self.chain, self.state, wpe, self.salt_source)
