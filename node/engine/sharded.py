"""`ShardedEngine`: one miner's θ sharded over the ranks of a process group (FSDP2).

Every rank builds θ_init from the seed, then `fully_shard` wraps each transformer
block and the root (PyTorch's own FSDP2: parameters are DTensors sharded on dim
0). A window's batch is split by rows: rank r trains on rows [r·b, (r+1)·b) of
every inner step's batch, FSDP2 averages the gradients, and the clip norm is
computed exactly from every rank's row partials (`exact_norm`). A single-process
engine with `micro_batch = b` therefore computes the same gradients, the same
clip and the same Δ, bit for bit (gradient averaging over two ranks is one
addition and a halving, both exact in order).

Every method is collective: all ranks call it, in the same order, with the same
arguments (node/engine/ranks.py drives the followers). The error feedback stays
sharded and each rank compresses its own rows (node/engine/sharded_codec.py):
the payload is byte-identical to a single-process encoding. The outer step is
computed on the CPU exactly as everywhere and each rank subtracts only its own
rows.

It never touches the network, the chain or the clock; only the process group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from node.engine.config import EngineConfig
from node.engine.device import resolve_device
from node.engine.evaluator import Evaluator
from node.engine.inner import InnerTrainer, all_row_partials, evaluate
from node.engine.local import EngineSpec, initial_params
from node.engine.model import build_model, get_config, model_manifest
from node.engine.sharded_codec import ShardedSparseLoCo
from node.engine.store import CheckpointStore, LocalCheckpoint, MetaValue
from node.errors import EngineError
from node.outer.aggregate import AggregateStats
from node.outer.optimizers import OuterOptimizer, make_outer
from node.outer.step import Selected, params_digest, values_at
from protocol.spec import CodecSpec, Manifest


def full(t: Tensor) -> Tensor:
    """The whole tensor on every rank (a collective for a DTensor)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


class ShardedEngine:
    """The `Engine` contract (node/engine/base.py) over an initialised process group."""

    def __init__(self, spec: EngineSpec, store: CheckpointStore | None = None,
                 config: EngineConfig | None = None) -> None:
        if not dist.is_initialized():
            raise EngineError("ShardedEngine needs an initialised process group")
        self.spec = spec
        self.config = config or EngineConfig()
        self.device = resolve_device(self.config.device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.device.type == "cuda":  # one GPU per rank (the ranks of one box)
            self.device = torch.device("cuda", self.rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        self.mesh: DeviceMesh = init_device_mesh(self.device.type, (self.world,))
        self.model_config = get_config(spec.model, spec.vocab_size)
        self._model = build_model(self.model_config, seed=spec.seed, device=self.device)
        self._manifest = model_manifest(self._model)  # before sharding: the full shapes
        if spec.init_from is not None:
            with torch.no_grad():
                for p, q in zip(self._model.parameters(), initial_params(spec,
                                self.model_config), strict=True):
                    p.copy_(q)
        self._model.checkpoint_blocks = self.config.activation_checkpointing
        for layer in self._model.layers:
            fully_shard(layer, mesh=self.mesh)
        fully_shard(self._model, mesh=self.mesh)
        self._params = list(self._model.parameters())
        self._trainer = InnerTrainer(self._model, spec.inner, self.config)
        self._trainer.partials = self._gathered_partials
        state_device = "cpu" if self.config.offload_error_feedback else self.device
        # SparseLoCo keeps its error feedback in the shards; the dense baselines (DiLoCo)
        # keep the whole, replicated outer state of node/outer
        self._sparse: ShardedSparseLoCo | None = None
        self._dense: OuterOptimizer | None = None
        self._state: ShardedSparseLoCo | OuterOptimizer  # what a restart keeps
        if spec.outer.optimizer == "sparseloco":
            self._sparse = self._state = ShardedSparseLoCo(spec.outer, self._manifest,
                                                           self.rank, self.world, state_device)
        else:
            self._dense = self._state = make_outer(spec.outer, self._manifest,
                                                   state_device=state_device)
        self._store = store if self.rank == 0 else None  # rank 0 writes, every rank reads
        self._reader = store
        self._pending: list[Tensor] | None = None

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def codec(self) -> CodecSpec:
        return self.spec.outer.codec

    @property
    def per_step(self) -> bool:
        return self._dense is not None and self._dense.per_step

    # --- collectives ----------------------------------------------------------------------
    def _gathered_partials(self, grads: Sequence[Tensor]) -> Tensor:
        """Every rank's row partials of its gradient shards, in one collective (their
        order is free: `exact_norm` adds them exactly)."""
        local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
        mine = all_row_partials(local).cpu()
        if not any(isinstance(g, DTensor) for g in grads):
            return mine
        parts: list[Tensor | None] = [None] * self.world
        dist.all_gather_object(parts, mine)
        return torch.cat([p for p in parts if p is not None])

    def _rows(self, batch: Tensor) -> Tensor:
        rows = batch.shape[0]
        if rows % self.world:
            raise EngineError(f"a batch of {rows} rows does not split over {self.world} ranks")
        share = rows // self.world
        return batch[self.rank * share:(self.rank + 1) * share]

    # --- training and the outer step -------------------------------------------------------
    def train(self, batches: Sequence[Tensor], first_step: int | None = None,
              public: Tensor | None = None) -> list[float]:
        mine = None if public is None else self._rows(public)
        result = self._trainer.run([self._rows(b) for b in batches], first_step, mine)
        # SparseLoCo encodes from the shards; the dense baselines from the whole Δ
        self._pending = result.delta if self._sparse else [full(d).cpu() for d in result.delta]
        return result.losses

    def gradient(self, batch: Tensor) -> float:
        raise EngineError("the sharded engine runs SparseLoCo windows, not per-step DDP")

    def encode(self) -> bytes:
        if self._pending is None:
            raise EngineError("nothing trained since the last encode")
        local, self._pending = self._pending, None
        if self._sparse is not None:
            return self._sparse.encode(local) or b""  # the payload is rank 0's to publish
        assert self._dense is not None
        return self._dense.encode(local)

    def apply(self, chosen: Sequence[Selected]) -> AggregateStats:
        if not chosen:
            return AggregateStats(peers=0, clipped=0, skipped=0)
        contributions = [(c.signer, c.tensors) for c in chosen]
        if self._sparse is None:
            assert self._dense is not None
            return self._dense.apply(self._params, contributions, self._trainer.apply_grads,
                                     place=self._place)
        steps, stats = self._sparse.aggregate(contributions, self.spec.outer.effective_lr)
        with torch.no_grad():
            for p, step, sharded in zip(self._params, steps, self._sparse.sharded, strict=True):
                if isinstance(p, DTensor) and sharded:  # this rank's rows, decoded alone
                    p.to_local().sub_(step.to(p.device, p.dtype))
                else:
                    p.sub_(self._place(p, step))
        return stats

    @staticmethod
    def _place(param: Tensor, update: Tensor) -> Tensor:
        if isinstance(param, DTensor):  # this rank's rows of the full update
            return distribute_tensor(update.to(param.device), param.device_mesh,
                                     param.placements)
        return update.to(param.device, param.dtype)

    def digest(self) -> bytes:
        return params_digest(self.full_params())

    def evaluate(self, batches: Sequence[Tensor]) -> float:
        return evaluate(self._model, batches)

    # --- θ in and out ----------------------------------------------------------------------
    def sample(self, positions: Sequence[tuple[int, int]]) -> list[float]:
        return values_at(self.full_params(), positions)

    def full_params(self) -> list[Tensor]:
        return [full(p.detach()).to("cpu", torch.float32).clone() for p in self._params]

    def load_params(self, params: Sequence[Tensor]) -> None:
        shapes = [tuple(t.shape) for t in params]
        if shapes != [tuple(s.shape) for s in self._manifest]:
            raise EngineError(f"{len(shapes)} tensors do not fit the model's manifest")
        with torch.no_grad():
            for p, q in zip(self._params, params, strict=True):
                p.copy_(self._place(p, q.to(torch.float32)))
        if self._trainer.public is not None:
            self._trainer.public.clear()  # folded along another θ's history

    def reset(self) -> None:
        self.load_params(initial_params(self.spec, self.model_config))

    # --- what only this node has ------------------------------------------------------------
    def local_state(self) -> dict[str, Tensor]:
        return {**self._state.local_state(), **self._trainer.public_state(full)}

    def load_local_state(self, state: Mapping[str, Tensor]) -> None:
        self._state.load_local_state(state)
        self._trainer.load_public_state(state, self._place)

    def fold_public(self, batch: Tensor, first_step: int) -> None:
        if self._trainer.public is None:
            raise EngineError("this run keeps no public second moment")
        self._trainer.observe_public(self._rows(batch), first_step)

    def save_local(self, window: int, meta: Mapping[str, MetaValue]) -> None:
        self.write_local(window, self.full_params(), self.local_state(), meta)
        dist.barrier()  # the file exists before any rank looks for it

    def write_local(self, window: int, params: Sequence[Tensor], state: Mapping[str, Tensor],
                    meta: Mapping[str, MetaValue]) -> None:
        """Rank 0 writes (no collective: the other ranks read the file when they restore,
        after the leader has it, node/engine/ranks.py)."""
        if self._reader is None:
            raise EngineError("this engine has no checkpoint store")
        if self._store is not None:
            self._store.save(window, params, state, meta)

    def latest_local(self) -> LocalCheckpoint | None:
        return self._reader.latest() if self._reader is not None else None

    def restore_local(self, checkpoint: LocalCheckpoint) -> None:
        self.load_params(checkpoint.params)
        self.load_local_state(checkpoint.extra)

    def evaluator(self) -> Evaluator:
        scratch = build_model(self.model_config, seed=self.spec.seed, device=self.device)
        return Evaluator(scratch, self._manifest, self.codec, self.config)
