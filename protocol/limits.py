"""Size caps checked before anything is allocated from a peer's bytes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Caps on wire input. The defaults fit a 1B-parameter model's sparse
    contribution (~40 MB at 4096/64 density) with a wide margin."""

    max_envelope_bytes: int = 256 * 1024 * 1024
    max_header_bytes: int = 4096
    max_tensors: int = 4096
    max_run_id_len: int = 64
    max_elements: int = 100_000_000_000  # 100B: a 72B model still fits

    def __post_init__(self) -> None:
        for name in ("max_envelope_bytes", "max_header_bytes", "max_tensors", "max_run_id_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


DEFAULT_LIMITS = Limits()
