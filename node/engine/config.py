"""`EngineConfig`: how one node computes — device, precision, memory savers.

These are operator settings (flags with GRADMESH_* fallbacks, the same for miner
and validator), never consensus: two nodes with different engine configs still
compute the same θ from the same contributions. What every node must agree on
lives in the run spec (node/runtime/runspec.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from node.errors import ConfigError

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")


@dataclass(frozen=True)
class EngineConfig:
    device: str = "cpu"  # auto | cpu | cuda | cuda:N
    precision: Precision = "fp32"  # bf16: autocast for the inner forward/backward only
    compile: bool = False  # torch.compile every transformer block
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    micro_batch: int | None = None  # rows per forward/backward (None: the whole batch)
    offload_error_feedback: bool = False  # keep the error feedback in CPU memory

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} not in {PRECISIONS}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ConfigError("micro_batch >= 1")
        if not self.device:
            raise ConfigError("device: give auto, cpu, cuda or cuda:N")


def micro_batches(rows: int, micro_batch: int | None) -> list[tuple[int, int]]:
    """[start, stop) row ranges that cover a batch of `rows` exactly, in order; the last
    one may be shorter. Gradient accumulation weighs each by its share of the rows, so
    the sum is the whole batch's mean-loss gradient."""
    size = rows if micro_batch is None else min(micro_batch, rows)
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]
