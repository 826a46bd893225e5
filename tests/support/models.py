"""Model helpers for tests that build `Decoder`s directly (the harnesses, not the engine)."""

from __future__ import annotations

import torch

from node.outer.step import params_digest


def model_digest(model: torch.nn.Module) -> bytes:
    """The θ digest of a bare model, computed as every engine does."""
    return params_digest(list(model.parameters()))
