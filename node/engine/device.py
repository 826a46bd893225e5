"""Where and in what precision this process computes: the one place that resolves a
device name and builds the autocast context.

Operator settings only: the device and precision change speed and memory, never
what θ becomes. The outer step stays fp32 and exact on every device (see
docs/protocol.md, "Determinism").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from node.engine.config import EngineConfig
from node.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda:0 when a GPU is visible, else cpu; 'cuda[:N]' must exist."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r}: {exc}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"device {name!r}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: no CUDA device is visible to this process")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


@contextlib.contextmanager
def autocast(device: torch.device, config: EngineConfig) -> Iterator[None]:
    """bf16 autocast for forward and backward when `config.precision` is bf16; the
    parameters, gradients and optimizer state stay fp32."""
    if config.precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
