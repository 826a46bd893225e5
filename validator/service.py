"""The validator daemon: follow θ_global like a miner, score each window, post weights.

Per window w (after the chain moves past it): score the envelopes gathered for
w against θ at w's start (`Validator.process_window`), apply the same outer
step as the miners, advance the commit-reveal plans (`Validator.post`) and
settle epochs whose reveal phase is over, which credits rewards on the contract.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from chain.client import ChainClient, Role
from chain.errors import ChainError
from node.mesh.base import Mesh
from node.runtime.aio import pause
from node.runtime.chainview import AsyncChain
from node.runtime.core import NodeConfig, NodeCore
from node.runtime.gather import Gatherer
from node.runtime.runspec import RunAssets, RunSpec
from node.status import ScoreRow
from protocol.envelope import BaseModel
from protocol.identity import Identity
from validator import rating
from validator.scorer import GlobalView, Validator, ValidatorConfig, WindowReport
from validator.scoring import ScoringConfig
from validator.source import Arrival
from validator.state import ValidatorState

log = logging.getLogger(__name__)


class GathererSource:
    """The validator's `ContributionSource` over the mesh: arrival = when *we* heard of it."""

    def __init__(self, gatherer: Gatherer) -> None:
        self.gatherer = gatherer

    def contributions(self, window: int) -> list[Arrival]:
        return [Arrival(r.data, r.at, r.order) for r in self.gatherer.received(window)]


class LockedClient:
    """A `ChainClient` whose calls take the chain's lock (the scorer runs in a thread)."""

    def __init__(self, client: ChainClient, lock: threading.Lock) -> None:
        self._client = client
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return locked


class ValidatorService(NodeCore):
    role = "validator"
    chain_role = Role.VALIDATOR

    def __init__(self, config: NodeConfig, spec: RunSpec, assets: RunAssets, identity: Identity,
                 mesh: Mesh, chain: AsyncChain, *, stake: int, validator_seed: int,
                 db_path: Path, eval_batches: int = 4, replay_steps: int | None = None
                 ) -> None:
        super().__init__(config, spec, assets, identity, mesh, chain, stake=stake)
        scoring = ScoringConfig(data_seed=spec.seed, inner_steps=spec.inner_steps,
                                batch_size=spec.batch_size, seq_len=assets.seq_len,
                                own_steps=min(eval_batches, spec.inner_steps),
                                rand_batches=eval_batches,
                                outer_lr=spec.effective_outer_lr,
                                warmup_windows=spec.score_warmup,
                                proof_of_data=spec.proof_of_data,
                                inner=spec.inner_config(), replay_steps=replay_steps)
        vcfg = ValidatorConfig(run_id=spec.run, validator_seed=validator_seed, scoring=scoring,
                               codec=spec.codec, commit_phase=spec.commit_phase,
                               limits=assets.limits)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.scorer = Validator(vcfg, LockedClient(chain.client, chain.lock),
                                GathererSource(self.gatherer), ValidatorState(db_path, spec.run),
                                assets.train_tokens, self.engine.evaluator())
        self.report: WindowReport | None = None
        self._last_scores: list[Any] = []
        self._closed = False
        self._scorer_lock = asyncio.Lock()  # its SQLite state: one user at a time

    def scores(self) -> list[Any]:
        if self._closed:  # the state database is closed: the last answer
            return self._last_scores
        states = self.scorer.state.miners()
        planned = dict(rating.weights({u: s.score for u, s in states.items()},
                                      self.scorer.cfg.policy))
        total = sum(planned.values()) or 1
        rows = {r.uid: r for r in self.report.rows} if self.report else {}
        by_uid = {m.uid: m.address for m in self.miners.values()}
        out = []
        for uid, st in sorted(states.items()):
            row = rows.get(uid)
            out.append(ScoreRow(uid=uid, address=by_uid.get(uid, ""),
                                status=row.status if row else "", reason=row.reason if row else "",
                                score=st.score, mu=st.mu, sigma=st.sigma,
                                weight=planned.get(uid, 0) / total))
        return out

    def background(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        return [self._posting(stop)]

    async def shutdown(self) -> None:
        if self.window >= 0:  # θ at the window in progress, and the public second moment
            await self.save_local()
        self._last_scores = self.scores()
        self._closed = True
        self.scorer.state.close()

    async def finish(self, window: int, started: float, ended: float, result: None) -> None:
        await self._score(window, deadline=ended + self.cfg.gather_grace)
        await self.finish_window(window, started=started, train_loss=None, ratio=None)

    async def _posting(self, stop: asyncio.Event) -> None:
        """Commit, reveal and settle on their own clock: scoring may take a while."""
        while not stop.is_set():
            await self._post()
            await pause(stop, max(1.0, 4 * self.cfg.poll))

    async def _score(self, window: int, deadline: float) -> None:
        self.state = "scoring"
        await self.gatherer.settle(window, self.cfg.gather_grace)
        params = await asyncio.to_thread(self.engine.full_params)
        view = GlobalView(params, BaseModel(step=window, digest=self.digest))
        try:
            async with self._scorer_lock:
                self.report = await asyncio.to_thread(self.scorer.process_window, window, view,
                                                      deadline)
        except ChainError as exc:
            self.event(window, f"scoring skipped: {exc}")
            return
        counts: dict[str, int] = {}
        for row in self.report.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        self.event(window, "scored " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))

    async def _post(self) -> None:
        async with self._scorer_lock:
            actions = await asyncio.to_thread(self.scorer.post)
        for epoch, action in actions:
            self.event(self.window, f"epoch {epoch}: {action}")
        try:
            params = await self.chain.params()
            now = await self.chain.window()
            for epoch in range(max(0, now // params.windows_per_epoch - 3),
                               now // params.windows_per_epoch):
                due = (epoch + 1) * params.windows_per_epoch + params.reveal_windows
                if now >= due and not await self.chain.call(self.chain.client.is_settled, epoch):
                    await self.chain.call(self.chain.client.settle, epoch)
                    self.event(self.window, f"settled epoch {epoch}")
        except ChainError as exc:
            log.info("settle: %s", exc)
