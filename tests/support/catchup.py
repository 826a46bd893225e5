"""Catch-up's test world (tests/unit/test_catchup*.py): peers that train and publish
what `NodeCore` leaves on the in-memory mesh, a joining node that runs `catch_up`, and
the fixtures that build them.

A `Peer` plays a miner the way `NodeCore` does: a real `LocalEngine` trains and
seals contributions, `select` + `apply` is the outer step, and what
`finish_window`, `save_checkpoint` and `_put_head` leave on the mesh (held
envelopes, window records, checkpoint manifest and chunks, the head record) is
left the same way. A joining node then runs `catch_up` against that mesh.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from node.engine.data import window_batch
from node.engine.inner import InnerConfig
from node.engine.local import EngineSpec, LocalEngine
from node.engine.store import CheckpointStore
from node.mesh import MemoryNetwork
from node.mesh.base import sha256
from node.mesh.memory import MemoryMesh
from node.outer.step import select
from node.runtime.catchup import CatchUpInputs, CatchUpResult, catch_up
from node.runtime.checkpoint import make_checkpoint
from node.runtime.records import HeadRecord, WindowRecord, head_key, window_key
from protocol.envelope import BaseModel, Expectation, seal
from protocol.identity import Identity
from protocol.spec import Manifest, manifest_digest
from tests.support.keys import identity
from tests.support.threads import one_thread  # noqa: F401

RUN = "catchup-test"
MODEL = "tiny"
SPEC = EngineSpec(model=MODEL, seed=0,
                  inner=InnerConfig(lr=3e-3, warmup_steps=1, total_steps=100))
TOKENS = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint16)
PUBLIC_SPEC = replace(SPEC, inner=replace(SPEC.inner, reset_each_window=True,
                                          public_second_moment=0.9))
PublicBatch = Callable[[int], tuple[torch.Tensor, int]]


def make_engine(store: Path | None = None, spec: EngineSpec = SPEC) -> LocalEngine:
    return LocalEngine(spec, CheckpointStore(store) if store is not None else None)


def expectation_of(codec_engine: LocalEngine) -> Callable[[int, Manifest], Expectation]:
    codec = codec_engine.codec
    return lambda window, manifest: Expectation(RUN, window, codec, manifest)


def clock(now: int) -> Callable[[], Awaitable[int]]:
    async def window() -> int:
        return now
    return window



@pytest.fixture(scope="module")
def theta_init(one_thread: None) -> bytes:  # noqa: F811 (the fixture, first)
    return make_engine().digest()


class Peer:
    """A miner that holds θ at the start of `self.window` and publishes what NodeCore does."""

    def __init__(self, network: MemoryNetwork | None, n: int, window: int) -> None:
        self.identity = identity(n)
        self.uid = n
        self.engine = make_engine()
        # a peer without a network has left: its envelopes live only where others hold them
        self.mesh: MemoryMesh | None = (network.node(self.identity, RUN)
                                        if network is not None else None)
        self.window = window  # θ is θ_global at the start of this window
        self.applied = window - 1
        self.checkpoint: tuple[int, bytes] | None = None  # (window, manifest sha) served
        self.digests: dict[int, bytes] = {}  # window -> θ digest at its start
        self.thetas: dict[int, list[torch.Tensor]] = {}  # window -> θ at its start

    @property
    def address(self) -> bytes:
        return self.identity.address

    @property
    def on_mesh(self) -> MemoryMesh:
        assert self.mesh is not None
        return self.mesh

    async def start(self) -> Peer:
        await self.on_mesh.start()
        self._remember()
        return self

    def _remember(self) -> None:
        self.digests[self.window] = self.engine.digest()
        self.thetas[self.window] = self.engine.full_params()

    def contribute(self) -> bytes:
        """Train one small batch at θ and seal the window's envelope."""
        batch = window_batch(TOKENS, seed=0, window=self.window, uid=self.uid, step=0,
                             batch_size=2, seq_len=32)
        self.engine.train([batch])
        return seal(self.identity, run_id=RUN, window=self.window,
                    base=BaseModel(self.window, self.engine.digest()),
                    codec=self.engine.codec, manifest=self.engine.manifest,
                    payload=self.engine.encode())

    async def finish(self, envelopes: Sequence[bytes], *, serve: bool = True,
                     record_digest: bytes | None = None) -> None:
        """NodeCore.finish_window: the outer step, hold what was applied, window record.
        `record_digest` makes the record lie about θ after the step."""
        w = self.window
        chosen, skipped = select(envelopes, expectation_of(self.engine)(w, self.engine.manifest),
                                 None)
        assert skipped == []
        self.engine.apply(chosen)
        self.applied, self.window = w, w + 1
        self._remember()
        if serve:
            by_sha = {sha256(e): e for e in envelopes}
            for c in chosen:
                await self.on_mesh.hold(w, by_sha[c.sha256])
        record = WindowRecord(w, record_digest or self.engine.digest(),
                              tuple((c.signer, c.sha256) for c in chosen))
        await self.on_mesh.put_record(window_key(RUN, w, self.address), record.encode())

    async def save_checkpoint(self, signer: Identity | None = None) -> bytes:
        """NodeCore.save_checkpoint (remote part): chunks and the signed manifest, held.
        `signer` signs the manifest in someone else's name."""
        manifest, chunks = make_checkpoint(signer or self.identity, run=RUN, window=self.window,
                                           model=MODEL, manifest=self.engine.manifest,
                                           params=self.engine.full_params())
        assert len(chunks) > 1  # the fetch of several chunks is exercised
        for chunk in chunks:
            await self.on_mesh.hold(self.window, chunk)
        sha = await self.on_mesh.hold(self.window, manifest.encode())
        self.checkpoint = (self.window, sha)
        return sha

    async def put_head(self) -> None:
        """NodeCore._put_head."""
        ckpt_window, ckpt_sha = self.checkpoint or (-1, b"")
        head = HeadRecord(self.applied, self.engine.digest(), ckpt_window, ckpt_sha,
                          self.on_mesh.peer_id, tuple(self.on_mesh.dial_addrs))
        await self.on_mesh.put_record(head_key(RUN, self.address), head.encode())


class Joiner:
    """The node catching up: its own mesh and engine on the same network."""

    def __init__(self, network: MemoryNetwork, store: Path | None, n: int,
                 spec: EngineSpec = SPEC) -> None:
        self.identity = identity(n)
        self.mesh = network.node(self.identity, RUN)
        self.engine = make_engine(store, spec)
        self._started = False

    async def catch_up(self, miners: Sequence[bytes], *, now: int, use_local: bool = True,
                       public: PublicBatch | None = None, lag: int = 0) -> CatchUpResult:
        if not self._started:
            await self.mesh.start()
            self._started = True
        return await catch_up(CatchUpInputs(
            run=RUN, model=MODEL, own_address=self.identity.address,
            miners=(*miners, self.identity.address), mesh=self.mesh, engine=self.engine,
            window=clock(now), expectation=expectation_of(self.engine),
            manifest_digest=manifest_digest(self.engine.manifest), use_local=use_local,
            fetch_timeout=5.0, record_timeout=1.0, public_batch=public, lag=lag))


JOINER_KEYS = itertools.count(90)
MakeJoiner = Callable[..., Joiner]


@pytest.fixture
async def joiner() -> AsyncIterator[MakeJoiner]:
    """Joiners with distinct keys, their meshes stopped afterwards (networks may be shared)."""
    made: list[Joiner] = []

    def make(network: MemoryNetwork, store: Path | None = None, spec: EngineSpec = SPEC
             ) -> Joiner:
        made.append(Joiner(network, store, next(JOINER_KEYS), spec))
        return made[-1]

    yield make
    for j in made:
        await j.mesh.stop()


@dataclass(frozen=True)
class History:
    network: MemoryNetwork
    a: Peer
    b_address: bytes


@pytest.fixture(scope="module")
def history(one_thread: None) -> History:  # noqa: F811 (the fixture, first)
    """Built once (training dominates the file's time); tests only read it. Nothing of a
    MemoryNetwork is bound to an event loop, so each test's loop can read it."""
    network = MemoryNetwork()
    a, b_address = asyncio.run(build_history(network))
    return History(network, a, b_address)


async def build_history(network: MemoryNetwork) -> tuple[Peer, bytes]:
    """Peer A from θ_init at window 3: applies 3, checkpoints θ at the start of 4, applies 4
    and 5 (5 with an envelope of miner B, who has left; only A holds it), head says so.
    Returns A and B's address."""
    a = await Peer(network, 1, window=3).start()
    await a.finish([a.contribute()])
    await a.save_checkpoint()
    await a.finish([a.contribute()])
    b = Peer(None, 2, window=5)
    b.engine.load_params(a.engine.full_params())
    await a.finish([a.contribute(), b.contribute()])
    await a.put_head()
    assert a.checkpoint is not None
    assert a.checkpoint[0] == 4
    assert a.window == 6
    assert len({a.digests[w] for w in (3, 4, 5, 6)}) == 4  # every step moved θ
    return a, b.address


def perturbed(engine: LocalEngine, by: float) -> list[torch.Tensor]:
    return [p + by for p in engine.full_params()]
