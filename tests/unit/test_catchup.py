"""Catch-up (node/runtime/catchup.py) over the in-memory mesh, without a chain.

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

from node.engine.data import PUBLIC_UID, window_batch
from node.engine.inner import InnerConfig
from node.engine.local import EngineSpec, LocalEngine
from node.engine.store import CheckpointStore
from node.mesh import MemoryNetwork
from node.mesh.base import sha256
from node.mesh.memory import MemoryMesh
from node.outer.step import select
from node.runtime.catchup import CatchUpError, CatchUpInputs, CatchUpResult, catch_up
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


def _engine(store: Path | None = None, spec: EngineSpec = SPEC) -> LocalEngine:
    return LocalEngine(spec, CheckpointStore(store) if store is not None else None)


def _expectation(codec_engine: LocalEngine) -> Callable[[int, Manifest], Expectation]:
    codec = codec_engine.codec
    return lambda window, manifest: Expectation(RUN, window, codec, manifest)


def _clock(now: int) -> Callable[[], Awaitable[int]]:
    async def window() -> int:
        return now
    return window



@pytest.fixture(scope="module")
def theta_init(one_thread: None) -> bytes:  # noqa: F811 (the fixture, first)
    return _engine().digest()


class Peer:
    """A miner that holds θ at the start of `self.window` and publishes what NodeCore does."""

    def __init__(self, network: MemoryNetwork | None, n: int, window: int) -> None:
        self.identity = identity(n)
        self.uid = n
        self.engine = _engine()
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
        chosen, skipped = select(envelopes, _expectation(self.engine)(w, self.engine.manifest),
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
        self.engine = _engine(store, spec)
        self._started = False

    async def catch_up(self, miners: Sequence[bytes], *, now: int, use_local: bool = True,
                       public: PublicBatch | None = None, lag: int = 0) -> CatchUpResult:
        if not self._started:
            await self.mesh.start()
            self._started = True
        return await catch_up(CatchUpInputs(
            run=RUN, model=MODEL, own_address=self.identity.address,
            miners=(*miners, self.identity.address), mesh=self.mesh, engine=self.engine,
            window=_clock(now), expectation=_expectation(self.engine),
            manifest_digest=manifest_digest(self.engine.manifest), use_local=use_local,
            fetch_timeout=5.0, record_timeout=1.0, public_batch=public, lag=lag))


_JOINER_KEYS = itertools.count(90)
MakeJoiner = Callable[..., Joiner]


@pytest.fixture
async def joiner() -> AsyncIterator[MakeJoiner]:
    """Joiners with distinct keys, their meshes stopped afterwards (networks may be shared)."""
    made: list[Joiner] = []

    def make(network: MemoryNetwork, store: Path | None = None, spec: EngineSpec = SPEC
             ) -> Joiner:
        made.append(Joiner(network, store, next(_JOINER_KEYS), spec))
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
    a, b_address = asyncio.run(_history(network))
    return History(network, a, b_address)


async def _history(network: MemoryNetwork) -> tuple[Peer, bytes]:
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


def _perturbed(engine: LocalEngine, by: float) -> list[torch.Tensor]:
    return [p + by for p in engine.full_params()]


# --- 1. a new network ----------------------------------------------------------------


async def test_a_new_network_starts_from_theta_init_at_the_next_window(
        theta_init: bytes, joiner: MakeJoiner) -> None:
    network = MemoryNetwork()
    node = joiner(network)
    node.engine.load_params(_perturbed(node.engine, 0.25))  # θ_init has to be restored
    assert node.engine.digest() != theta_init
    # registered miners without any head record yet
    result = await node.catch_up([identity(7).address, identity(8).address], now=9)
    assert result.fresh is True
    assert (result.window, result.applied) == (10, 9)
    assert result.heads == {}
    assert result.text == "θ_init at window 10, replayed 0 windows, now at window 10"
    assert node.engine.digest() == theta_init == _engine().digest()


# --- 2. checkpoint, then replay --------------------------------------------------------


async def test_a_remote_checkpoint_is_loaded_and_later_windows_are_replayed(
        theta_init: bytes, history: History, joiner: MakeJoiner) -> None:
    a, b_address = history.a, history.b_address
    node = joiner(history.network)
    result = await node.catch_up([a.address, b_address], now=6)
    assert result.fresh is False
    assert (result.window, result.applied) == (6, 5)
    assert node.engine.digest() == a.digests[6] == a.engine.digest()
    assert node.engine.digest() not in (theta_init, a.digests[4], a.digests[5])
    assert result.text == (f"checkpoint of window 4 from 0x{a.address.hex()[:8]}, "
                           "replayed 2 windows, now at window 6")
    assert set(result.heads) == {a.address}
    assert result.heads[a.address].checkpoint_window == 4
    assert result.heads[a.address].applied_window == 5


# --- 3. local against remote checkpoints ---------------------------------------------


async def test_a_newer_local_checkpoint_wins_over_an_older_remote_one(
        tmp_path: Path, history: History, joiner: MakeJoiner) -> None:
    a, b_address = history.a, history.b_address
    node = joiner(history.network, store=tmp_path)
    # θ at the start of window 5, as this node saved it before a restart
    node.engine.load_params(a.thetas[5])
    assert node.engine.digest() == a.digests[5]
    node.engine.save_local(5, {"digest": a.digests[5].hex(), "run": RUN})
    node.engine.reset()
    result = await node.catch_up([a.address, b_address], now=6)
    assert result.text == "local checkpoint of window 5, replayed 1 windows, now at window 6"
    assert (result.window, result.fresh) == (6, False)
    assert node.engine.digest() == a.digests[6]


async def test_use_local_false_takes_the_remote_checkpoint_over_a_newer_local_one(
        tmp_path: Path, history: History, joiner: MakeJoiner) -> None:
    a, b_address = history.a, history.b_address
    node = joiner(history.network, store=tmp_path)
    # a newer local checkpoint whose θ nobody else has (the node diverged)
    node.engine.load_params(_perturbed(a.engine, 0.5))
    bogus = node.engine.digest()
    node.engine.save_local(7, {"digest": bogus.hex(), "run": RUN})
    node.engine.reset()

    trusted = await node.catch_up([a.address, b_address], now=7)
    assert trusted.text == "local checkpoint of window 7, replayed 0 windows, now at window 7"
    assert (trusted.window, node.engine.digest()) == (7, bogus)

    result = await node.catch_up([a.address, b_address], now=7, use_local=False)
    assert result.text == (f"checkpoint of window 4 from 0x{a.address.hex()[:8]}, "
                           "replayed 2 windows, now at window 6")
    assert result.window == 6
    assert node.engine.digest() == a.digests[6] != bogus


# --- 4. refusals -----------------------------------------------------------------------


async def test_a_checkpoint_signed_by_another_key_than_the_heads_owner_is_refused(
        joiner: MakeJoiner) -> None:
    network = MemoryNetwork()
    a = await Peer(network, 1, window=4).start()
    stranger = identity(50)
    await a.save_checkpoint(signer=stranger)  # valid signature, wrong signer
    await a.put_head()
    node = joiner(network)
    with pytest.raises(CatchUpError, match="not trusted") as err:
        await node.catch_up([a.address], now=4)
    assert stranger.address.hex() in str(err.value)
    assert f"checkpoint from 0x{a.address.hex()}" in str(err.value)
    # the same checkpoint signed by A itself is taken
    await a.save_checkpoint()
    await a.put_head()
    result = await node.catch_up([a.address], now=4)
    assert result.text == (f"checkpoint of window 4 from 0x{a.address.hex()[:8]}, "
                           "replayed 0 windows, now at window 4")


async def test_a_window_record_whose_digest_the_replay_does_not_reach_is_refused(
        joiner: MakeJoiner) -> None:
    network = MemoryNetwork()
    a = await Peer(network, 1, window=4).start()
    await a.save_checkpoint()
    await a.finish([a.contribute()], record_digest=sha256(b"not what the step gives"))
    await a.put_head()
    node = joiner(network)
    with pytest.raises(CatchUpError, match="window 4: replayed θ differs from the record"):
        await node.catch_up([a.address], now=5)
    # the replay itself happened: θ is the honest step's, just not the record's
    assert node.engine.digest() == a.digests[5]


# --- 5. the majority's record ------------------------------------------------------------


async def test_the_record_most_miners_agree_on_is_replayed(theta_init: bytes,
                                                          joiner: MakeJoiner) -> None:
    network = MemoryNetwork()
    a, b, c = [await Peer(network, n, window=3).start() for n in (1, 2, 3)]
    envelope = a.contribute()
    await a.finish([envelope])
    await b.finish([envelope])
    # the liar's record is self-consistent (replaying it reaches its digest), just not
    # what the others applied: it says the window had no contributions
    await c.finish([])
    for p in (a, b, c):
        await p.put_head()
    assert a.digests[4] == b.digests[4] != c.digests[4]
    node = joiner(network)
    # the liar is read first: taking the first record found would pick it
    result = await node.catch_up([c.address, a.address, b.address], now=2)
    assert result.text == "θ_init at window 3, replayed 1 windows, now at window 4"
    assert result.fresh is True
    assert node.engine.digest() == a.digests[4] != theta_init


# --- 6. an envelope nobody serves ------------------------------------------------------------


async def test_a_listed_envelope_that_no_holder_serves_is_an_error(joiner: MakeJoiner) -> None:
    network = MemoryNetwork()
    a = await Peer(network, 1, window=3).start()
    envelope = a.contribute()
    await a.finish([envelope], serve=False)  # applied and recorded, but never held
    await a.put_head()
    node = joiner(network)
    with pytest.raises(CatchUpError, match=f"no holder served {sha256(envelope).hex()[:16]}"):
        await node.catch_up([a.address], now=2)


# --- 7. the public second moment -----------------------------------------------------------


def _public(window: int) -> tuple[torch.Tensor, int]:
    """A window's public batch and first step (H = 2)."""
    return window_batch(TOKENS, seed=0, window=window, uid=PUBLIC_UID, step=0, batch_size=2,
                        seq_len=32), 2 * window


@pytest.mark.parametrize("lag", [0, 1])
async def test_replayed_windows_fold_the_public_batch_of_the_window_their_theta_trains(
        tmp_path: Path, history: History, joiner: MakeJoiner, lag: int) -> None:
    """A miner stopped after training the window that trains from θ of 4 (window 4 + lag),
    with its local checkpoint of window 4, replays 4 and 5: that window is not folded again,
    window 5 + lag is folded at θ of 5, and the estimate is the one a validator folding
    every window at its θ holds, bit for bit."""
    a, b_address = history.a, history.b_address
    node = joiner(history.network, store=tmp_path, spec=PUBLIC_SPEC)
    node.engine.load_params(a.thetas[4])
    node.engine.fold_public(*_public(4 + lag))
    node.engine.save_local(4, {"digest": a.digests[4].hex(), "run": RUN})
    node.engine.reset()  # the restart
    assert not any(k.startswith("public.") for k in node.engine.local_state())
    result = await node.catch_up([a.address, b_address], now=6, public=_public, lag=lag)
    assert result.text == "local checkpoint of window 4, replayed 2 windows, now at window 6"
    assert node.engine.digest() == a.digests[6]
    validator = _engine(spec=PUBLIC_SPEC).evaluator()  # another node's
    for w in (4, 5):
        batch, first_step = _public(w + lag)
        validator.observe_public(a.thetas[w], batch, PUBLIC_SPEC.inner, tag=first_step)
    state = node.engine.local_state()
    assert validator.public is not None
    assert validator.public.sq is not None
    assert int(state["public.windows"]) == 2
    assert all(torch.equal(state[f"public.{i}"], t) for i, t in enumerate(validator.public.sq))


async def test_with_a_public_second_moment_the_own_checkpoint_goes_first_then_the_newest(
        tmp_path: Path, history: History, joiner: MakeJoiner) -> None:
    """Its own checkpoint (window 3) keeps the estimate, so it is replayed from even though
    A's (window 4) is newer; one from before every record (window 2) cannot reach A's, so
    A's is taken after all. Without a public second moment the newest always wins."""
    a, b_address = history.a, history.b_address
    node = joiner(history.network, store=tmp_path, spec=PUBLIC_SPEC)
    node.engine.load_params(a.thetas[3])
    node.engine.save_local(3, {"digest": a.digests[3].hex(), "run": RUN})
    result = await node.catch_up([a.address, b_address], now=6, public=_public)
    assert result.text == "local checkpoint of window 3, replayed 3 windows, now at window 6"
    assert node.engine.digest() == a.digests[6]
    assert int(node.engine.local_state()["public.windows"]) == 3
    for store, window in ((tmp_path / "old", 2), (tmp_path / "plain", 3)):
        other = joiner(history.network, store=store, spec=PUBLIC_SPEC)
        other.engine.load_params(a.thetas[3])
        other.engine.save_local(window, {"digest": a.digests[3].hex(), "run": RUN})
        result = await other.catch_up([a.address, b_address], now=6,
                                      public=_public if window == 2 else None)
        assert result.text == (f"checkpoint of window 4 from 0x{a.address.hex()[:8]}, "
                               "replayed 2 windows, now at window 6")
        assert other.engine.digest() == a.digests[6]
