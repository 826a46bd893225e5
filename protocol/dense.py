"""Dense payload codec: the manifest's tensors as little-endian float32, concatenated.

No framing: the manifest fixes every shape, so the payload length is exactly
4 * total elements and anything else is rejected before allocating.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from protocol.errors import (
    ManifestMismatchError,
    NonFiniteValueError,
    OversizedError,
    TruncatedError,
    WrongTypeError,
)
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.spec import Manifest, total_elements

BYTES_PER_VALUE = 4


def encode_dense(tensors: Sequence[torch.Tensor], manifest: Manifest) -> bytes:
    """Concatenate `tensors` (float32, manifest shapes and order) as <f4 bytes."""
    if len(tensors) != len(manifest):
        raise ManifestMismatchError(f"{len(tensors)} tensors for a manifest of {len(manifest)}")
    parts: list[bytes] = []
    for x, entry in zip(tensors, manifest, strict=True):
        if tuple(x.shape) != entry.shape:
            raise ManifestMismatchError(f"{entry.name}: shape {tuple(x.shape)} != {entry.shape}")
        if x.dtype != torch.float32:
            raise WrongTypeError(f"{entry.name}: dtype {x.dtype} is not float32")
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteValueError(f"{entry.name}: non-finite value")
        parts.append(x.detach().to("cpu").contiguous().numpy().astype("<f4").tobytes())
    return b"".join(parts)


def decode_dense(payload: bytes, manifest: Manifest,
                 limits: Limits = DEFAULT_LIMITS) -> list[torch.Tensor]:
    """Inverse of `encode_dense`, bit-exact; CPU float32 tensors in manifest order."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise WrongTypeError(f"expected bytes, got {type(payload).__name__}")
    if len(manifest) > limits.max_tensors:
        raise OversizedError(f"{len(manifest)} tensors exceeds cap {limits.max_tensors}")
    n = total_elements(manifest)
    if n > limits.max_elements:
        raise OversizedError(f"{n} elements exceeds cap {limits.max_elements}")
    size = len(payload)
    if size > limits.max_envelope_bytes:
        raise OversizedError(f"{size} bytes exceeds cap {limits.max_envelope_bytes}")
    expected = BYTES_PER_VALUE * n
    if size > expected:
        raise OversizedError(f"{size} bytes, expected {expected}")
    if size < expected:
        raise TruncatedError(f"{size} bytes, expected {expected}")
    flat = torch.from_numpy(np.frombuffer(payload, dtype="<f4").astype(np.float32))
    if not bool(torch.isfinite(flat).all()):
        raise NonFiniteValueError("non-finite value in a dense payload")
    sizes = [t.numel for t in manifest]
    return [
        part.reshape(entry.shape)
        for part, entry in zip(torch.split(flat, sizes), manifest, strict=True)
    ]
