"""Window and epoch arithmetic: pure functions of block numbers and parameters."""

from __future__ import annotations

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

    def epoch_of_window(self, window: int) -> int:
        if window < 0:
            raise ProtocolError(f"negative window {window}")
        return window // self.windows_per_epoch

    def windows_of_epoch(self, epoch: int) -> range:
        if epoch < 0:
            raise ProtocolError(f"negative epoch {epoch}")
        start = epoch * self.windows_per_epoch
        return range(start, start + self.windows_per_epoch)
