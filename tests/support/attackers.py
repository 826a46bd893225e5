"""A small in-process network for validator tests: honest miners and attackers.

`Harness` owns θ_global, a `MemoryChain`, a `MemoryBoard` (through the
validator's `BoardSource`) and one `Validator`. Each window: every miner builds
its wire bytes from θ_global (honest: H real AdamW steps on its assignment, then
SparseLoCo error feedback + top-k + 2-bit), they are published in a fixed
order (honest first, so copiers are the later announcers), the chain moves to
the next window, the validator scores, persists, posts and settles due epochs,
and θ_global takes the daemons' outer step: the envelopes signed by the
contract's aggregation set (`select`), clipped to the median, mean, lr 1.0.
Before the first settled epoch the contract's set is its lowest uids, which
here are the honest miners (they register first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from chain.client import ChainParams, Role
from chain.memory import MemoryChain
from node.engine.data import PUBLIC_UID, heldout_batches, stdlib_corpus, window_batch
from node.engine.evaluator import Evaluator
from node.engine.inner import InnerConfig, InnerTrainer, ResetScope, evaluate
from node.engine.model import Decoder, build_model, get_config, model_manifest
from node.mesh.board import MemoryBoard
from node.outer.aggregate import aggregate_sparse, scale_values
from node.outer.optimizers import OuterConfig, SparseLoCo
from node.outer.step import select, values_at
from protocol.baseproof import base_proof, proof_positions
from protocol.envelope import BaseModel, Expectation, read_unverified, seal
from protocol.identity import Identity, checksum_address
from protocol.sparse import compress, decode_payload, decompress, encode_payload
from protocol.window import Schedule
from tests.support.models import model_digest
from validator.scorer import GlobalView, Validator, ValidatorConfig, WindowReport
from validator.scoring import ScoringConfig
from validator.source import BoardSource
from validator.state import ValidatorState

RUN = "advtest"
HONEST = "honest"
ATTACKS = ("zero", "noise", "x10", "signflip", "resign", "copynoise", "replay", "wrongdata",
           "malformed", "absent", "stalecopy", "scaled", "echo", "equivocate",
           "stalebase", "frontrun")
# kinds that copy this window's honest work: they can only have it after the release
COPY_NOW = ("resign", "copynoise", "frontrun")
# trained miners: honest work, possibly misused afterwards
TRAINED = (HONEST, "x10", "signflip", "replay", "wrongdata", "scaled", "equivocate",
           "stalebase")


def key(name: str) -> Identity:
    return Identity.from_secret(hashlib.sha256(f"validator-test:{name}".encode()).digest())


@dataclass(frozen=True)
class HarnessConfig:
    model: str = "tiny"
    inner_steps: int = 6
    batch_size: int = 8
    seq_len: int = 64
    inner_lr: float = 2e-3
    seed: int = 0
    validator_seed: int = 1234
    corpus_bytes: int = 4 * 2**20
    windows_per_epoch: int = 2
    aggregation_size: int = 4  # the contract's top-K set that miners aggregate
    proof_of_data: bool = True  # by replay while inner_reset, by loss (weak) otherwise
    inner_reset: bool = True  # miners start each window's AdamW afresh (replayable)
    # what the miners' reset forgets ("first_moment": a study of whether the replay proof
    # survives miners that carry AdamW's second moment); the validator replays fresh
    reset_scope: ResetScope = "all"
    # the run's public second moment (its decay; None: none): miners fold each window's
    # public batch before training it, the validator before replaying it
    public_second_moment: float | None = None
    commit_phase: float = 0.5  # two-phase publication (0: announce at once, no commitments)


@dataclass
class Miner:
    name: str
    kind: str
    identity: Identity
    uid: int = -1
    model: Decoder | None = None
    trainer: InnerTrainer | None = None
    outer: SparseLoCo | None = None
    old: list[bytes] = field(default_factory=list)  # its previous envelopes (replay)


class Harness:
    def __init__(self, cfg: HarnessConfig, kinds: list[str], db: Path,
                 validator_seed: int | None = None) -> None:
        self.cfg = cfg
        corpus = stdlib_corpus(cfg.corpus_bytes)
        self.tokens = corpus.train
        self.eval = heldout_batches(corpus.heldout, n_batches=4, batch_size=8,
                                    seq_len=cfg.seq_len, seed=99)
        mcfg = get_config(cfg.model)
        self.theta = build_model(mcfg, seed=cfg.seed)
        self.manifest = model_manifest(self.theta)
        self.outer_cfg = OuterConfig()
        self.codec = self.outer_cfg.codec
        self.step = 0
        self.chain = MemoryChain(ChainParams(blocks_per_window=100,  # room for every commit
                                             windows_per_epoch=cfg.windows_per_epoch,
                                             reveal_windows=1,
                                             aggregation_size=cfg.aggregation_size),
                                 fund=10**21)
        self.miners: list[Miner] = []
        counts: dict[str, int] = {}
        for kind in kinds:
            n = counts.get(kind, 0)
            counts[kind] = n + 1
            m = Miner(f"{kind}{n}", kind, key(f"{kind}{n}"))
            m.uid = self.chain.client(checksum_address(m.identity.address)).register(
                Role.MINER, b"peer-" + m.name.encode(), 10**18)
            if kind in TRAINED:
                m.model = build_model(mcfg, seed=cfg.seed)
                m.trainer = InnerTrainer(m.model, self.miner_inner_config())
                m.outer = SparseLoCo(self.outer_cfg, self.manifest)
            self.miners.append(m)
        self.vkey = key("validator")
        vaddr = checksum_address(self.vkey.address)
        self.vclient = self.chain.client(vaddr)
        self.vclient.register(Role.VALIDATOR, b"peer-validator", 10**18)
        self.board = MemoryBoard()
        self.clock_now = 0.0
        self.source = BoardSource(self.board, lambda: self.clock_now)
        self.db = db
        self.vseed = cfg.validator_seed if validator_seed is None else validator_seed
        self.validator = self.make_validator()
        self.honest_payloads: list[bytes] = []
        self.previous_honest: list[bytes] = []
        self.in_set: dict[bytes, int] = {}  # signer -> windows aggregated
        self.previous_theta: list[torch.Tensor] | None = None  # θ before the last step

    def inner_config(self) -> InnerConfig:
        return InnerConfig(lr=self.cfg.inner_lr, warmup_steps=2, total_steps=1000,
                           reset_each_window=self.cfg.inner_reset,
                           public_second_moment=self.cfg.public_second_moment)

    def miner_inner_config(self) -> InnerConfig:
        return replace(self.inner_config(), reset_scope=self.cfg.reset_scope)

    # --- validator -------------------------------------------------------------------------
    def scoring_config(self) -> ScoringConfig:
        return ScoringConfig(data_seed=self.cfg.seed, inner_steps=self.cfg.inner_steps,
                             batch_size=self.cfg.batch_size, seq_len=self.cfg.seq_len,
                             proof_of_data=self.cfg.proof_of_data, inner=self.inner_config())

    def make_validator(self, chain_client: object | None = None) -> Validator:
        vcfg = ValidatorConfig(run_id=RUN, validator_seed=self.vseed,
                               scoring=self.scoring_config(), codec=self.codec,
                               commit_phase=self.cfg.commit_phase)
        model = build_model(get_config(self.cfg.model), seed=self.cfg.seed)
        return Validator(vcfg, chain_client or self.vclient,  # type: ignore[arg-type]
                         self.source, ValidatorState(self.db, RUN), self.tokens,
                         Evaluator(model, self.manifest, self.codec))

    # --- miners ----------------------------------------------------------------------------
    def base(self) -> BaseModel:
        return BaseModel(step=self.step, digest=model_digest(self.theta))

    def _start(self, m: Miner) -> list[torch.Tensor]:
        """The θ a miner trains from: θ_global, or the one before it for "stalebase"."""
        stale = m.kind == "stalebase" and self.previous_theta is not None
        return list(self.previous_theta) if stale else [  # type: ignore[arg-type]
            p.detach() for p in self.theta.parameters()]

    def _train(self, m: Miner, window: int, data_uid: int) -> list[torch.Tensor]:
        assert m.model is not None
        assert m.trainer is not None
        with torch.no_grad():
            for p, t in zip(m.model.parameters(), self._start(m), strict=True):
                p.copy_(t)
        batches = [window_batch(self.tokens, seed=self.cfg.seed, window=window, uid=data_uid,
                                step=s, batch_size=self.cfg.batch_size, seq_len=self.cfg.seq_len)
                   for s in range(self.cfg.inner_steps)]
        public = None if self.cfg.public_second_moment is None else window_batch(
            self.tokens, seed=self.cfg.seed, window=window, uid=PUBLIC_UID, step=0,
            batch_size=self.cfg.batch_size, seq_len=self.cfg.seq_len)
        return m.trainer.run(batches, window * self.cfg.inner_steps, public).delta

    def _seal(self, m: Miner, window: int, payload: bytes) -> bytes:
        """Sealed on the current base, with the base proof from the θ the miner holds
        (every kind but "stalebase" holds θ_global)."""
        payload_hash = hashlib.sha256(payload).digest()
        held = self._start(m)
        values = values_at(held, proof_positions(payload_hash, self.manifest))
        base = BaseModel(self.step, model_digest(self.theta), base_proof(payload_hash, values))
        return seal(m.identity, run_id=RUN, window=window, base=base, codec=self.codec,
                    manifest=self.manifest, payload=payload)

    def _honest_norms(self) -> list[float]:
        _, _, payload = read_unverified(self.honest_payloads[0])
        first = decode_payload(payload, self.manifest, self.codec)
        return [float(decompress(st, s.shape, self.codec).norm())
                for st, s in zip(first, self.manifest, strict=True)]

    def wire(self, m: Miner, window: int, gen: torch.Generator) -> bytes | None:
        kind = m.kind
        if kind == "absent":
            return None
        if kind == "malformed":
            return self._seal(m, window, b"\x94\xc4\x01\x00" + bytes(range(40)))
        trains = kind in TRAINED and kind != "replay"
        if trains or (kind == "replay" and not m.old):
            assert m.outer is not None
            data_uid = m.uid + 1000 if kind == "wrongdata" else m.uid
            delta = self._train(m, window, data_uid)
            mult = {"x10": 10.0, "signflip": -1.0, "scaled": 3.0}.get(kind, 1.0)
            wire = self._seal(m, window, m.outer.encode([d * mult for d in delta]))
            if kind == HONEST:
                self.honest_payloads.append(wire)
            m.old.append(wire)
            return wire
        if kind == "replay":
            return m.old[0]  # a validly signed envelope of an older window
        if kind == "zero":
            zero = [torch.zeros(s.shape) for s in self.manifest]
            return self._seal(m, window, encode_payload([compress(z, self.codec) for z in zero],
                                                        self.manifest, self.codec))
        if kind == "noise":
            sts = []
            for s, norm in zip(self.manifest, self._honest_norms(), strict=True):
                x = torch.randn(s.shape, generator=gen)
                st = compress(x, self.codec)
                dense = decompress(st, s.shape, self.codec)
                scaled = st.table * (norm / max(float(dense.norm()), 1e-12))
                sts.append(type(st)(st.indices, st.codes, scaled.to(torch.float32)))
            return self._seal(m, window, encode_payload(sts, self.manifest, self.codec))
        if kind == "echo":  # the last outer step, compressed: free-riding on everyone
            if self.previous_theta is None:
                return None
            step = [compress(a - b.detach(), self.codec) for a, b in
                    zip(self.previous_theta, self.theta.parameters(), strict=True)]
            return self._seal(m, window, encode_payload(step, self.manifest, self.codec))
        if kind == "stalecopy":  # another miner's previous-window payload, re-signed
            if not self.previous_honest:
                return None
            _, _, payload = read_unverified(self.previous_honest[0])
            return self._seal(m, window, payload)
        if kind in ("resign", "frontrun"):
            _, _, payload = read_unverified(self.honest_payloads[0])
            return self._seal(m, window, payload)
        if kind == "copynoise":
            _, _, payload = read_unverified(self.honest_payloads[-1])
            sts = decode_payload(payload, self.manifest, self.codec)
            out = []
            for st, s in zip(sts, self.manifest, strict=True):
                dense = decompress(st, s.shape, self.codec)
                noisy = dense + 0.05 * float(dense.std()) * torch.randn(s.shape, generator=gen)
                out.append(compress(noisy, self.codec))
            return self._seal(m, window, encode_payload(out, self.manifest, self.codec))
        raise ValueError(kind)

    # --- one window ---------------------------------------------------------------------
    def run_window(self, window: int, post: bool = True,
                   before_score: Callable[[], None] | None = None) -> WindowReport:
        target = self.chain.genesis + window * self.chain.p.blocks_per_window
        if self.chain.block < target:
            self.chain.mine(target - self.chain.block)
        self.previous_honest, self.honest_payloads = self.honest_payloads, []
        gen = torch.Generator().manual_seed(window * 7919 + 1)
        order = sorted(self.miners, key=lambda m: (m.kind != HONEST, m.uid))
        self.clock_now = float(window)
        built = []
        for m in order:
            wire = self.wire(m, window, gen)
            built.append((m, [wire, self._other_half(m, window, wire)]
                          if m.kind == "equivocate" else [wire]))
        if self.cfg.commit_phase > 0.0:
            self._commit(window, built)
        published = []
        for m, wires in built:
            for i, w in enumerate(wires):
                if w is not None:  # the board takes one post per poster: a relay posts #2
                    poster = m.identity.address if i == 0 else key(f"relay-{m.name}").address
                    # a front-runner sits closer to the validator than the author it copies
                    at = window - 0.25 if m.kind == "frontrun" else None
                    self.source.publish(window, poster, w, at=at)
                    published.append(w)
        self.chain.mine(target + self.chain.p.blocks_per_window - self.chain.block)  # closes
        if before_score:
            before_score()
        view = GlobalView([p.detach().clone() for p in self.theta.parameters()], self.base())
        report = self.validator.process_window(window, view, deadline=window + 0.5)
        if post:
            self.validator.post()
            self.settle_revealed()
        if not report.replayed:
            self.outer_step(window, published)
        return report

    def _commit(self, window: int, built: list[tuple[Miner, list[bytes | None]]]) -> None:
        """The commit phase, then the chain moves to the release block. Everyone commits
        before any envelope is out, so a kind that copies this window's honest work can
        only commit to what is public: the author's commitment."""
        public = hashlib.sha256(self.honest_payloads[0]).digest() if self.honest_payloads else None
        for m, wires in built:
            own = wires[0]
            digest = public if m.kind in COPY_NOW else (
                hashlib.sha256(own).digest() if own is not None else None)
            if digest is not None:
                self.chain.client(checksum_address(m.identity.address)).commit_contribution(
                    window, digest)
        schedule = Schedule(self.chain.genesis, self.chain.p.blocks_per_window,
                            self.chain.p.windows_per_epoch)
        release = schedule.release_block(window, self.cfg.commit_phase)
        assert self.chain.block < release, "the harness's commit phase is too short"
        self.chain.mine(release - self.chain.block)

    def _other_half(self, m: Miner, window: int, wire: bytes | None) -> bytes | None:
        """A second, different envelope for the same window (equivocation): the same
        update at half size, validly signed."""
        if wire is None:
            return None
        _, _, payload = read_unverified(wire)
        sts = decode_payload(payload, self.manifest, self.codec)
        half = [scale_values(st, 0.5) for st in sts]
        return self._seal(m, window, encode_payload(half, self.manifest, self.codec))

    def outer_step(self, window: int, published: list[bytes]) -> None:
        """What every daemon does (node/runtime/core.py): `select` the envelopes signed
        by the contract's aggregation set, then clip to median, mean, SGD."""
        members = {bytes.fromhex(a[2:]) for _, a in self.vclient.aggregation_set()}
        expect = Expectation(RUN, window, self.codec, self.manifest)
        chosen, _ = select(published, expect, members)
        for c in chosen:
            self.in_set[c.signer] = self.in_set.get(c.signer, 0) + 1
        self.previous_theta = [p.detach().clone() for p in self.theta.parameters()]
        if chosen:
            update, _ = aggregate_sparse([(c.signer, c.tensors) for c in chosen],
                                         self.manifest, self.codec)
            with torch.no_grad():
                for p, u in zip(self.theta.parameters(), update, strict=True):
                    p.sub_(u, alpha=self.outer_cfg.effective_lr)
        self.step += 1

    def settle_revealed(self) -> tuple[int, list[int]]:
        """Settle every revealed epoch whose reveal phase is over (as the validator
        service does); return the newest settled epoch and the contract's aggregation
        set (uids) the miners use next."""
        p = self.chain.p
        for plan in self.validator.state.plans(("revealed",)):
            done = self.vclient.current_window() >= (plan.epoch + 1) * p.windows_per_epoch + 1
            if done and not self.vclient.is_settled(plan.epoch):
                self.vclient.settle(plan.epoch)
        epoch, _ = self.vclient.last_consensus()
        return epoch, [uid for uid, _ in self.vclient.aggregation_set()]

    def windows_in_set(self) -> dict[str, int]:
        """Per miner, the windows whose outer step included its contribution."""
        return {m.name: self.in_set.get(m.identity.address, 0) for m in self.miners}

    def plan_shares(self, epoch: int) -> dict[str, float]:
        """Each miner's share of the validator's vote for `epoch`."""
        plan = self.validator.state.plan(epoch)
        if plan is None:
            raise AssertionError(f"no vote planned for epoch {epoch}")
        by_uid = dict(zip(plan.uids, plan.weights, strict=True))
        total = sum(plan.weights) or 1
        return {m.name: by_uid.get(m.uid, 0) / total for m in self.miners}

    def heldout(self) -> float:
        return evaluate(self.theta, self.eval)

    def weights(self) -> dict[str, float]:
        """Each miner's share of the validator's latest revealed vote."""
        revealed = [p for p in self.validator.state.plans(("revealed",))]
        if not revealed:
            return {m.name: 0.0 for m in self.miners}
        plan = revealed[-1]
        by_uid = dict(zip(plan.uids, plan.weights, strict=True))
        total = sum(plan.weights) or 1
        return {m.name: by_uid.get(m.uid, 0) / total for m in self.miners}

    def latest_plan_weights(self) -> dict[str, float]:
        plans = self.validator.state.plans()
        plan = plans[-1]
        by_uid = dict(zip(plan.uids, plan.weights, strict=True))
        total = sum(plan.weights) or 1
        return {m.name: by_uid.get(m.uid, 0) / total for m in self.miners}


def all_kinds(honest: int = 4) -> list[str]:
    return [HONEST] * honest + list(ATTACKS)
