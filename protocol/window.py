"""Window and epoch arithmetic: pure functions of block numbers and parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocol.errors import ProtocolError


@dataclass(frozen=True)
class Schedule:
    """How blocks group into windows and windows into epochs (deploy-time values)."""

    genesis_block: int
    blocks_per_window: int
    windows_per_epoch: int

    def __post_init__(self) -> None:
        if self.genesis_block < 0 or self.blocks_per_window < 1 or self.windows_per_epoch < 1:
            raise ProtocolError(f"invalid schedule {self}")

    def window_of_block(self, block: int) -> int:
        """Window containing `block`; blocks before genesis belong to no window."""
        if block < self.genesis_block:
            raise ProtocolError(f"block {block} precedes genesis {self.genesis_block}")
        return (block - self.genesis_block) // self.blocks_per_window

    def first_block(self, window: int) -> int:
        if window < 0:
            raise ProtocolError(f"negative window {window}")
        return self.genesis_block + window * self.blocks_per_window

    def last_block(self, window: int) -> int:
        return self.first_block(window + 1) - 1

    def release_block(self, window: int, commit_phase: float) -> int:
        """Two-phase publication: the first block of `window` from which miners release
        their envelopes. A commitment counts only if it landed in `window` before this
        block, the first `ceil(commit_phase × blocks_per_window)` blocks (at least one,
        and at least one block is left for the release)."""
        if not 0.0 < commit_phase < 1.0 or self.blocks_per_window < 2:
            raise ProtocolError(f"no commit phase: phase {commit_phase}, "
                                f"{self.blocks_per_window} blocks per window")
        blocks = min(self.blocks_per_window - 1,
                     max(1, math.ceil(commit_phase * self.blocks_per_window)))
        return self.first_block(window) + blocks

    def committed_in_time(self, window: int, block: int, commit_phase: float) -> bool:
        """Whether a commitment that landed in `block` counts for `window`."""
        return self.first_block(window) <= block < self.release_block(window, commit_phase)

    def epoch_of_window(self, window: int) -> int:
        if window < 0:
            raise ProtocolError(f"negative window {window}")
        return window // self.windows_per_epoch

    def windows_of_epoch(self, epoch: int) -> range:
        if epoch < 0:
            raise ProtocolError(f"negative epoch {epoch}")
        start = epoch * self.windows_per_epoch
        return range(start, start + self.windows_per_epoch)
