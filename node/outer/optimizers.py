"""Outer optimizers behind one interface: SparseLoCo, DiLoCo and a DDP baseline.

A miner turns its local result (the window's pseudo-gradient, or for DDP one
step's gradient) into payload bytes with `encode`, checks peers' payloads with
`decode`, and applies the aggregate of the selected peers with `apply`. Every
miner of a run holds its own instance; the state that must agree across peers
(DiLoCo's momentum) evolves identically because it only sees the aggregate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from node.errors import ConfigError
from node.outer.aggregate import AggregateStats, SparseMean, aggregate_mean
from protocol.dense import decode_dense, encode_dense
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.sparse import SparsePayload, SparseTensor, compress, decompress, encode_payload
from protocol.spec import CodecSpec, IndexCoding, Manifest

OptimizerName = Literal["sparseloco", "diloco", "ddp"]
OPTIMIZERS: tuple[OptimizerName, ...] = ("sparseloco", "diloco", "ddp")
Contribution = Any  # decoded payload: list[SparseTensor] or list[Tensor]
InnerStep = Callable[[Sequence[torch.Tensor]], None]  # one inner step with given gradients
# turns a full fp32 CPU update into what can be subtracted from a parameter (a sharded
# engine hands out its shard as a DTensor); it only moves values, never rounds them
Place = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def to_param(param: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    return update.to(param.device, param.dtype)


@dataclass(frozen=True)
class OuterConfig:
    """Reference values from the Covenant-72B run (see docs/design notes)."""

    optimizer: OptimizerName = "sparseloco"
    lr: float | None = None  # None -> the optimizer's default below
    error_decay: float = 0.95  # SparseLoCo error-feedback β
    momentum: float = 0.9  # DiLoCo Nesterov momentum
    k: int = 64
    chunk: int = 64
    index_coding: IndexCoding = "gap"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError("outer lr must be positive")
        if not 0.0 <= self.error_decay < 1.0 or not 0.0 <= self.momentum < 1.0:
            raise ConfigError("error_decay and momentum must lie in [0, 1)")

    @property
    def effective_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return {"sparseloco": 1.0, "diloco": 0.7, "ddp": 1.0}[self.optimizer]

    @property
    def codec(self) -> CodecSpec:
        if self.optimizer == "sparseloco":
            return CodecSpec("sparseloco", self.chunk, self.k, 2, self.index_coding)
        return CodecSpec("dense", self.chunk, self.k, 2, "fixed12")


class OuterOptimizer(ABC):
    """One miner's outer optimizer. `per_step` optimizers sync every inner step."""

    per_step: bool = False

    def __init__(self, config: OuterConfig, manifest: Manifest,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.config = config
        self.manifest = manifest
        self.codec = config.codec
        self.limits = limits

    buffers: tuple[str, ...] = ()  # names of the per-tensor state lists kept across windows

    def local_state(self) -> dict[str, torch.Tensor]:
        """CPU copies of the state a restart must keep (`<buffer>.<tensor index>`)."""
        return {f"{name}.{i}": t.detach().to("cpu", copy=True) for name in self.buffers
                for i, t in enumerate(getattr(self, name))}

    def load_local_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Put back what `local_state` returned; absent or misshaped entries stay as they are."""
        for name in self.buffers:
            for i, buf in enumerate(getattr(self, name)):
                saved = state.get(f"{name}.{i}")
                if saved is not None and saved.shape == buf.shape:
                    buf.copy_(saved)

    @abstractmethod
    def encode(self, local: Sequence[torch.Tensor]) -> bytes:
        """Turn this miner's local result into the payload it publishes."""

    @abstractmethod
    def decode(self, payload: bytes) -> Contribution:
        """Validate a peer's payload (raises `ProtocolError`)."""

    @abstractmethod
    def apply(self, params: Sequence[torch.Tensor],
              contributions: Sequence[tuple[bytes, Contribution]],
              inner_step: InnerStep, place: Place = to_param) -> AggregateStats:
        """Apply the aggregate of `contributions` (signer, decoded) to `params`; a per-step
        optimizer hands the averaged gradients to `inner_step` instead."""


class SparseLoCo(OuterOptimizer):
    """Error feedback + chunked top-k + 2-bit values; clip-to-median mean; SGD outer."""

    buffers = ("error",)

    def __init__(self, config: OuterConfig, manifest: Manifest,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(config, manifest, limits)
        self.error = [torch.zeros(t.shape, dtype=torch.float32) for t in manifest]

    def encode(self, local: Sequence[torch.Tensor]) -> bytes:
        def compressed() -> Iterator[SparseTensor]:  # one tensor at a time
            for err, delta, spec in zip(self.error, local, self.manifest, strict=True):
                err.mul_(self.config.error_decay).add_(delta.to(err.device, torch.float32))
                st = compress(err, self.codec)
                # what was sent leaves the buffer; what was not stays for later windows
                err.sub_(decompress(st, spec.shape, self.codec).to(err.device))
                yield st

        return encode_payload(compressed(), self.manifest, self.codec)

    def decode(self, payload: bytes) -> Contribution:
        return SparsePayload(payload, self.manifest, self.codec, self.limits)

    def apply(self, params: Sequence[torch.Tensor],
              contributions: Sequence[tuple[bytes, Contribution]],
              inner_step: InnerStep, place: Place = to_param) -> AggregateStats:
        # The determinism contract (docs/protocol.md): decode, clip, mean and the lr
        # product in fp32 on the CPU, in signer order; the device only subtracts, which
        # rounds the same everywhere (a CUDA scalar division multiplies by a reciprocal).
        # One tensor at a time: decoded, averaged and subtracted before the next.
        mean = SparseMean(contributions, self.manifest, self.codec, "cpu")
        lr = self.config.effective_lr
        with torch.no_grad():
            for p, u in zip(params, mean, strict=True):
                step = u if lr == 1.0 else u.mul_(lr)
                p.sub_(place(p, step))
        return mean.stats


class DiLoCo(OuterOptimizer):
    """Dense pseudo-gradients, plain mean, Nesterov-momentum SGD outer step."""

    buffers = ("velocity",)

    def __init__(self, config: OuterConfig, manifest: Manifest,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(config, manifest, limits)
        self.velocity = [torch.zeros(t.shape, dtype=torch.float32) for t in manifest]

    def encode(self, local: Sequence[torch.Tensor]) -> bytes:
        return encode_dense(list(local), self.manifest)

    def decode(self, payload: bytes) -> Contribution:
        return decode_dense(payload, self.manifest, self.limits)

    def apply(self, params: Sequence[torch.Tensor],
              contributions: Sequence[tuple[bytes, Contribution]],
              inner_step: InnerStep, place: Place = to_param) -> AggregateStats:
        mean = aggregate_mean(contributions)
        mu, lr = self.config.momentum, self.config.effective_lr
        with torch.no_grad():
            for p, g, v in zip(params, mean, self.velocity, strict=True):
                g = g.to(v.device)
                v.mul_(mu).add_(g)
                p.sub_(place(p, g + mu * v), alpha=lr)  # Nesterov look-ahead
        return AggregateStats(peers=len(contributions), clipped=0, skipped=0)


class DDPBaseline(OuterOptimizer):
    """Every inner step: exchange dense gradients, average, step the inner AdamW."""

    per_step = True

    def encode(self, local: Sequence[torch.Tensor]) -> bytes:
        return encode_dense(list(local), self.manifest)

    def decode(self, payload: bytes) -> Contribution:
        return decode_dense(payload, self.manifest, self.limits)

    def apply(self, params: Sequence[torch.Tensor],
              contributions: Sequence[tuple[bytes, Contribution]],
              inner_step: InnerStep, place: Place = to_param) -> AggregateStats:
        inner_step(aggregate_mean(contributions))
        return AggregateStats(peers=len(contributions), clipped=0, skipped=0)


def make_outer(config: OuterConfig, manifest: Manifest, limits: Limits = DEFAULT_LIMITS,
               state_device: torch.device | str = "cpu") -> OuterOptimizer:
    """The run's outer optimizer; its local state (error feedback, velocity) is kept on
    `state_device`."""
    kinds: dict[str, type[OuterOptimizer]] = {
        "sparseloco": SparseLoCo, "diloco": DiLoCo, "ddp": DDPBaseline,
    }
    outer = kinds[config.optimizer](config, manifest, limits)
    for name in outer.buffers:
        setattr(outer, name, [t.to(state_device) for t in getattr(outer, name)])
    return outer
