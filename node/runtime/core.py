"""What miners and validators share: θ_global, the window's outer step, records,
checkpoints (their writing and the records that name them: node/runtime/persist.py)
and the status the dashboard shows.

A node holds θ (in its engine, node/engine) from which window `self.window`
trains: θ after every window up to `self.window - 1 - lag` (`self.applied`).
The lag is 0, or 1 when the run spec's `overlap` is on: then window w trains
from θ after ≤ w − 2 while w − 1's contributions still travel. `finish_window(w)`
takes the envelopes of window w − lag, chooses which count (node/outer/step.py),
has the engine apply them, leaves a signed window record and, every few
windows, a checkpoint others can start from; catching up
(node/runtime/catchup.py) replays the same steps from records, whose windows
are always the applied ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from chain.client import Role
from chain.errors import ChainError, ChainUnavailableError
from node.engine.base import Engine
from node.engine.config import EngineConfig
from node.engine.data import PUBLIC_UID
from node.errors import ConfigError, NodeError
from node.mesh.base import Mesh, sha256
from node.mesh.errors import MeshError
from node.outer.step import diverged, select
from node.runtime.aio import pause
from node.runtime.catchup import CatchUpError, CatchUpInputs, catch_up
from node.runtime.chainview import AsyncChain
from node.runtime.checkpointer import Checkpointer
from node.runtime.gather import Gatherer
from node.runtime.persist import Persistence
from node.runtime.records import HeadRecord
from node.runtime.runfile import check_recorded
from node.runtime.runspec import RunAssets, RunSpec
from node.status import NodeRole, NodeSnapshot, TimelineEvent, WindowPoint
from protocol.identity import Identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeConfig:
    name: str
    data_dir: Path
    checkpoint_every: int = 2  # windows between published checkpoints
    keep_windows: int = 16  # envelopes and checkpoints served for this many windows
    gather_grace: float = 3.0  # seconds after a window ends for in-flight fetches
    poll: float = 0.25  # chain polling interval
    fetch_timeout: float = 20.0
    record_timeout: float = 5.0
    engine: EngineConfig = field(default_factory=EngineConfig)  # device, precision, memory

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1 or self.keep_windows < 2:
            raise ConfigError("checkpoint_every >= 1 and keep_windows >= 2")
        if min(self.gather_grace, self.fetch_timeout, self.record_timeout) < 0 or self.poll <= 0:
            raise ConfigError("gather_grace, fetch_timeout, record_timeout >= 0; poll > 0")


class RegistrationError(NodeError):
    """The chain holds this key in another role; the operator must sort it out."""


class NodeCore(Persistence):
    role: NodeRole = "miner"
    chain_role: Role = Role.MINER

    def __init__(self, config: NodeConfig, spec: RunSpec, assets: RunAssets, identity: Identity,
                 mesh: Mesh, chain: AsyncChain, *, stake: int, engine: Engine | None = None
                 ) -> None:
        if spec.optimizer != "sparseloco":
            raise ConfigError(f"the daemons run SparseLoCo, not {spec.optimizer!r} "
                              "(DiLoCo and DDP are baselines for `gradmesh simulate`)")
        self.cfg = config
        self.stake = stake
        self.uid = -1
        self.spec = spec
        self.assets = assets
        self.identity = identity
        self.mesh = mesh
        self.chain = chain
        self.engine = engine if engine is not None else assets.engine(
            config.data_dir / "checkpoints", config.engine)
        self.manifest = self.engine.manifest
        self.lag = spec.lag  # windows between training a window and applying it
        self.window = -1  # the window θ trains (-1: not synced yet)
        self.applied = -1  # last window whose outer step was applied here
        self.digest = self.engine.digest()
        self.digests: dict[int, bytes] = {}  # applied window -> θ digest after it (recent)
        self.state = "starting"
        self.history: list[WindowPoint] = []
        self.timeline: deque[TimelineEvent] = deque(maxlen=200)
        self.checkpoint: tuple[int, bytes] | None = None  # (window, manifest sha) published
        self.miners: dict[bytes, Any] = {}  # address -> MinerSlot, from the chain
        self.heads: dict[bytes, HeadRecord] = {}  # other miners' head records (catch-up)
        self.distrust_local = False  # after a divergence our own checkpoints are suspect
        self.halt_at: int | None = None  # apply no window after this one (see `halt_after`)
        self.stopping = asyncio.Event()  # the `stop` of `run`
        self.gatherer = Gatherer(mesh, spec.run, allowed=lambda a: a in self.miners,
                                 current_window=lambda: chain.last_window,
                                 max_bytes=assets.limits.max_envelope_bytes,
                                 fetch_timeout=config.fetch_timeout,
                                 refresh=self._refresh_soon)
        self._miners_read = 0.0
        self._bytes_mark = (0, 0)
        self.checkpointer = Checkpointer(self._write_checkpoint, self.event)

    # --- status -----------------------------------------------------------------------
    def event(self, window: int, text: str) -> None:
        log.info("%s w%d %s", self.cfg.name, window, text)
        self.timeline.append(TimelineEvent(t=time.time(), window=window, event=text))

    def snapshot(self) -> NodeSnapshot:
        stats = self.mesh.stats()
        return NodeSnapshot(
            name=self.cfg.name, role=self.role, address=self.identity.address_hex,
            peer_id=self.mesh.peer_id, state=self.state, window=self.window,
            peers=len(self.mesh.connected_peers()), bytes_in=stats.bytes_in,
            bytes_out=stats.bytes_out, history=list(self.history),
            timeline=list(self.timeline), scores=self.scores(),
        )  # fmt: skip

    def scores(self) -> list[Any]:
        return []

    # --- chain ------------------------------------------------------------------------
    async def refresh_miners(self) -> None:
        try:
            slots = await self.chain.call(self.chain.client.miners)
        except ChainError as exc:
            log.warning("miners(): %s (keeping the last known set)", exc)
            return
        self.miners = {bytes.fromhex(m.address[2:]): m for m in slots}
        self._miners_read = time.monotonic()

    async def register(self) -> None:
        """Join the contract in this node's role (nothing to do if already in it), after
        checking that the contract trains this node's run spec."""
        check_recorded(self.spec, await self.chain.call(self.chain.client.run_spec_hash))
        info = await self.chain.call(self.chain.client.role_of, self.identity.address_hex)
        if info.role == self.chain_role and info.active:
            self.uid = info.uid
            return
        if info.role != Role.NONE:
            raise RegistrationError(f"{self.identity.address_hex} is registered as {info.role}")
        self.uid = await self.chain.call(self.chain.client.register, self.chain_role,
                                         self.mesh.peer_id.encode(), self.stake)
        self.event(-1, f"registered as {self.role} uid {self.uid}")

    async def run(self, stop: asyncio.Event) -> None:
        """The service until `stop`: join, then the window loop beside the gatherer (and
        whatever `background` adds); on the way out `shutdown`, then leave the mesh."""
        self.stopping = stop
        await self.mesh.start()
        try:
            if not await self.join(stop):
                return
            async with asyncio.TaskGroup() as tg:
                helpers = [tg.create_task(c) for c in (self.gatherer.run(),
                                                        *self.background(stop))]
                try:
                    await self.drive(stop, self.work, self.finish)
                finally:
                    for task in helpers:
                        task.cancel()
        finally:
            try:
                await self.checkpointer.wait()  # a checkpoint being written is finished
            finally:
                await self.shutdown()
                await self.mesh.stop()
                self.state = "stopped"

    def background(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        """Extra tasks a service runs beside the window loop."""
        return []

    async def work(self, window: int, whole: bool) -> Any:
        """What the node does during a window (a validator only listens)."""
        return None

    async def finish(self, window: int, started: float, ended: float, result: Any) -> None:
        await self.finish_window(window, started=started, train_loss=None, ratio=None)

    async def shutdown(self) -> None:
        """Flush what must survive a restart."""

    async def join(self, stop: asyncio.Event) -> bool:
        """Register, waiting out an unreachable chain; False if stopped first. Refusals
        by the contract (typed reverts) are not retried: they need the operator."""
        while not stop.is_set():
            try:
                await self.register()
                await self.refresh_miners()
                return True
            except ChainUnavailableError as exc:
                self.event(-1, f"chain unreachable, retrying: {exc}")
                await pause(stop, 2.0)
        return False

    async def _refresh_soon(self) -> None:
        """Re-read the miners at most every 2 s (unknown announcers trigger it)."""
        if time.monotonic() - self._miners_read >= 2.0:
            await self.refresh_miners()

    async def aggregation_members(self) -> set[bytes]:
        """Signers whose envelopes count: the contract's aggregation set."""
        pairs = await self.chain.call(self.chain.client.aggregation_set)
        return {bytes.fromhex(addr[2:]) for _, addr in pairs}

    # --- the window's outer step -----------------------------------------------------
    async def finish_window(self, trained: int, *, started: float, train_loss: float | None,
                            ratio: float | None) -> None:
        """After window `trained`: gather the envelopes of window `trained - lag`, apply
        its outer step, leave records. On success θ trains window `trained + 1`."""
        await self._fold_public(trained)
        self.state = "gathering"
        window = trained - self.lag
        await self.gatherer.settle(window, self.cfg.gather_grace)
        try:
            allowed = await self.aggregation_members()
        except ChainError as exc:
            # without the set no step can be agreed on: keep θ, catch up from peers later
            self.event(window, f"chain unavailable ({type(exc).__name__}); window skipped")
            self.window = -1
            return
        expect = self.assets.expectation(window, self.manifest)
        envelopes = self.gatherer.envelopes(window)
        chosen, skipped = select(envelopes, expect, allowed, self.assets.limits)
        for s in skipped:
            log.info("%s w%d skipped %s: %s", self.cfg.name, window, s.sha256.hex()[:12], s.reason)
        base = self.digests.get(window - 1 - self.lag)  # θ the window trained from
        others = diverged(base, self.identity.address, chosen) if base is not None else 0
        if others:
            # our θ is not the one the network trains from: replay from peers instead
            self.event(window, f"diverged from {others} peers' θ: resyncing")
            self.window, self.distrust_local = -1, True
            return
        stats = await asyncio.to_thread(self.engine.apply, chosen)
        self._applied_to(window, await asyncio.to_thread(self.engine.digest))
        self.event(window, f"applied {stats.peers} contributions")
        by_sha = {sha256(e): e for e in envelopes}
        for c in chosen:  # serve what we applied, so late joiners can replay it from us
            await self.mesh.hold(window, by_sha[c.sha256])
        await self._put_window_record(window, [(c.signer, c.sha256) for c in chosen])
        if self.window % self.cfg.checkpoint_every == 0:
            await self.save_checkpoint(wait=False)  # written while the next window trains
        await self._put_head()
        self.mesh.forget(self.window - self.cfg.keep_windows)
        self.gatherer.forget(self.window - 2 - self.lag)
        loss = await asyncio.to_thread(self.engine.evaluate, self.assets.eval_batches)
        self._record_point(window, loss, train_loss, len(chosen), ratio, started)

    def _applied_to(self, window: int, digest: bytes) -> None:
        """θ is now θ after `window` (digest `digest`): it trains window + 1 + lag."""
        self.applied, self.window, self.digest = window, window + 1 + self.lag, digest
        self.digests = {w: d for w, d in self.digests.items() if w >= window - 3}
        self.digests[window] = digest

    def _record_point(self, window: int, loss: float, train_loss: float | None, inputs: int,
                      ratio: float | None, started: float) -> None:
        stats = self.mesh.stats()
        out, inn = stats.bytes_out - self._bytes_mark[0], stats.bytes_in - self._bytes_mark[1]
        self._bytes_mark = (stats.bytes_out, stats.bytes_in)
        self.history.append(WindowPoint(
            window=window, heldout_loss=loss, train_loss=train_loss, bytes_out=out, bytes_in=inn,
            contributions=inputs, compression_ratio=ratio,
            seconds=time.time() - started, param_digest=self.digest.hex(),
        ))  # fmt: skip

    def halt_after(self, window: int) -> None:
        """Apply no window after `window`, then idle until stopped, still serving the mesh
        (so peers behind can catch up from us). Raising it again resumes the node."""
        self.halt_at = window if self.halt_at is None else max(self.halt_at, window)

    def halted(self, window: int) -> bool:
        """Whether window `window` lies past the halt (it must not be applied)."""
        return self.halt_at is not None and window > self.halt_at

    async def drive(self, stop: asyncio.Event,
                    work: Callable[[int, bool], Awaitable[Any]],
                    finish: Callable[[int, float, float, Any], Awaitable[None]]) -> None:
        """The window loop. `work(w, whole)` runs during w (`whole`: this node heard every
        announcement of w, because it was listening before w began); after w,
        `finish(w, started, ended, result)` applies window w − lag if this node heard it
        whole, else the node replays it from its peers' records."""
        listening_since = await self.chain.wait_window(0, self.cfg.poll, stop)  # gatherer on
        await self.sync(stop)
        while not stop.is_set():
            w = self.window
            if self.halted(w - self.lag):
                self.state = "halted"
                await pause(stop, self.cfg.poll)
                continue
            whole = w > listening_since
            if self.chain.last_window < w:
                await self.chain.wait_window(w, self.cfg.poll, stop)
                if stop.is_set():
                    break
            if self.chain.last_window > w + 1 or (self.chain.last_window > w and not whole):
                await self.sync(stop)  # too far behind to apply w from what we gathered
                continue
            started = time.time()
            applies = w - self.lag > listening_since  # heard the applied window whole
            result = await work(w, whole) if self.chain.last_window == w else None
            self.state = "waiting"
            await self.chain.wait_window(w + 1, self.cfg.poll, stop)
            if stop.is_set():
                break  # abandon w: θ is still θ at its start
            ended = time.time()
            await self.refresh_miners()
            if self.halted(w - self.lag):
                continue  # halted while w ran: θ stays at w's start
            if applies:
                await finish(w, started, ended, result)
            if self.window != w + 1:
                await self.sync(stop)

    async def sync(self, stop: asyncio.Event) -> None:
        """Catch up until θ is the one the chain's current window trains from."""
        self.state = "catching-up"
        while not stop.is_set():
            try:
                await self.refresh_miners()
                result = await catch_up(self.catch_up_inputs())
                now = await self.chain.window()
            except (CatchUpError, MeshError, ChainError) as exc:
                self.event(self.window, f"catch-up failed: {exc}")
                self.window = -1  # the engine may hold a half-replayed θ: not a window's start
                await pause(stop, 2.0)
                continue
            self.heads = result.heads
            self.digests = {}  # a replayed θ: only its own digest is known
            self._applied_to(result.applied, self.engine.digest())
            nobody = all(h.applied_window <= result.applied for h in self.heads.values())
            if self.window < now - 1 and nobody:
                # nobody applied these windows: they are empty for everyone. (One window
                # behind is not enough evidence: a peer may still be finishing it, or its
                # record may not have reached us yet.)
                self._applied_to(now - 1 - self.lag, self.digest)
            if self.window >= now:
                self.distrust_local = False
                self.event(self.window, f"synced: {result.text}")
                if result.fresh or self.checkpoint is None:
                    await self.save_checkpoint()  # so a later joiner finds a start point
                await self._put_head()
                return
            await pause(stop, self.cfg.poll * 4)  # peers are still finishing a window

    def public_batch(self) -> Callable[[int], tuple[Tensor, int]] | None:
        """A window's public batch and first step, in a run with a public second moment
        (None otherwise): what catch-up and `_fold_public` fold."""
        if self.spec.public_second_moment is None:
            return None
        return lambda w: (self.assets.batch(w, PUBLIC_UID, 0), self.spec.first_step(w))

    async def _fold_public(self, window: int) -> None:
        """Fold `window`'s public batch into the engine's public second moment while θ is
        still the one that trains it, as every peer folds it: a miner that trained the
        window has (the engine skips it by its tag), one that reached it too late has
        not, and a validator's scoring folds it into the same estimate (its evaluator
        shares the engine's)."""
        public = self.public_batch()
        if public is not None and self.window == window:
            batch, first_step = public(window)
            await asyncio.to_thread(self.engine.fold_public, batch, first_step)

    def catch_up_inputs(self) -> CatchUpInputs:
        """What catch-up needs of this node, and nothing more."""
        return CatchUpInputs(
            run=self.spec.run, model=self.spec.model, own_address=self.identity.address,
            miners=tuple(self.miners), mesh=self.mesh, engine=self.engine,
            window=self.chain.window, expectation=self.assets.expectation,
            manifest_digest=self.assets.manifest_digest(self.manifest),
            use_local=not self.distrust_local, fetch_timeout=self.cfg.fetch_timeout,
            record_timeout=self.cfg.record_timeout, limits=self.assets.limits,
            public_batch=self.public_batch(), lag=self.lag,
        )  # fmt: skip
