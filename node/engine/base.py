"""The Engine seam: the one object per process that owns θ.

Everything that reads or writes model parameters goes through an `Engine`: the
runtime's window loop, catch-up, the validator service and the simulator. A GPU,
a dtype or FSDP sharding enters here and nowhere else. `LocalEngine`
(node/engine/local.py) is the single-process implementation; every
implementation passes the one contract suite in tests/unit/test_engine_contract.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from torch import Tensor

from node.engine.evaluator import Evaluator
from node.engine.store import LocalCheckpoint, MetaValue
from node.outer.aggregate import AggregateStats
from node.outer.step import Selected
from protocol.spec import CodecSpec, Manifest


class Engine(Protocol):
    """θ, the inner optimizer and the outer optimizer's local state of one node.

    The contract, for every implementation:

    * `manifest` names the parameters in wire order; `codec` is how this engine's
      contributions are encoded; `per_step` is True when contributions are one
      inner step's gradients (the DDP baseline), False for a window's Δ.
    * `train(batches, first_step)` runs the inner steps and returns their losses;
      θ is left exactly as it was (bit for bit), the result is kept for `encode`.
      `first_step` (window × H) numbers the steps for the learning-rate schedule
      when the run resets the inner optimizer each window; otherwise it is unused.
      `public` is the window's public batch, required when the inner optimizer keeps a
      public second moment (`InnerConfig.public_second_moment`), else unused.
      `gradient(batch)` does the same for one batch's gradient (per-step engines).
      `fold_public(batch, first_step)` folds a window's public batch at θ into the
      public second moment, as `train` does first (catch-up folds the windows it
      replays); both skip a window (named by its first step) folded already, so a
      window trained before a restart and replayed after counts once. `EngineError`
      when the run keeps no public second moment.
    * `encode()` turns the pending result into payload bytes, updating the error
      feedback; it raises `EngineStateError` when nothing is pending.
    * `apply(chosen)` is the one canonical outer step: the contributions that
      `node.outer.step.select` chose, in its order. Two engines with the same θ
      and outer state given the same `chosen` end with the same `digest()`.
      An empty `chosen` changes nothing.
    * `digest()` is SHA-256 over θ's fp32 bytes in manifest order, computed the
      same way on every device and layout.
    * `evaluate(batches)` is the mean loss without gradients; θ is unchanged.
    * `sample(positions)` returns θ's fp32 values at (tensor index, flat offset)
      positions, in order, as Python floats (the base proof reads these); θ is
      unchanged, and after `train` it is θ at the window's start.
    * `full_params()` hands out fp32 CPU copies of θ (never views); `load_params`
      takes such a list (shapes checked, `EngineStateError` otherwise); `reset()`
      loads θ_init, identical on every node of the run.
    * `local_state()` / `load_local_state()` are what only this node has (the
      error feedback, and the public second moment when the run keeps one): fp32
      CPU copies, keyed by name; unknown or misshaped entries are ignored on load.
      `load_params` forgets the public second moment (it was folded along another
      θ's history); `restore_local` brings back the one its checkpoint kept.
    * `save_local(window, meta)` writes θ and the local state to this node's
      checkpoint store. `write_local(window, params, state, meta)` writes a snapshot
      taken earlier with `full_params()` and `local_state()` instead; it reads nothing
      of the engine, so it may run on another thread while the engine trains
      (`EngineError` without a store, for both). `latest_local()` returns the
      newest checkpoint there that verifies (None without a store or a checkpoint)
      and `restore_local(c)` loads θ and local state from it.
    * `evaluator()` is a scratch model for scoring updates without touching θ. A
      single-process engine's shares the engine's public second moment, so what a
      validator's scoring folds is kept by its local checkpoint and continued by its
      catch-up (a sharded engine's holds its own).
    """

    @property
    def manifest(self) -> Manifest: ...

    @property
    def codec(self) -> CodecSpec: ...

    @property
    def per_step(self) -> bool: ...

    def train(self, batches: Sequence[Tensor], first_step: int | None = None,
              public: Tensor | None = None) -> list[float]: ...

    def gradient(self, batch: Tensor) -> float: ...

    def fold_public(self, batch: Tensor, first_step: int) -> None: ...

    def encode(self) -> bytes: ...

    def apply(self, chosen: Sequence[Selected]) -> AggregateStats: ...

    def digest(self) -> bytes: ...

    def evaluate(self, batches: Sequence[Tensor]) -> float: ...

    def sample(self, positions: Sequence[tuple[int, int]]) -> list[float]: ...

    def full_params(self) -> list[Tensor]: ...

    def load_params(self, params: Sequence[Tensor]) -> None: ...

    def reset(self) -> None: ...

    def local_state(self) -> dict[str, Tensor]: ...

    def load_local_state(self, state: Mapping[str, Tensor]) -> None: ...

    def save_local(self, window: int, meta: Mapping[str, MetaValue]) -> None: ...

    def write_local(self, window: int, params: Sequence[Tensor], state: Mapping[str, Tensor],
                    meta: Mapping[str, MetaValue]) -> None: ...

    def latest_local(self) -> LocalCheckpoint | None: ...

    def restore_local(self, checkpoint: LocalCheckpoint) -> None: ...

    def evaluator(self) -> Evaluator: ...
