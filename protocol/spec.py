"""What a contribution claims to be: codec parameters and the tensor manifest."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from protocol import canonical
from protocol.errors import CodecMismatchError, WrongTypeError

CodecName = Literal["sparseloco", "dense"]
IndexCoding = Literal["fixed12", "gap"]
CODEC_NAMES: tuple[CodecName, ...] = ("sparseloco", "dense")
INDEX_CODINGS: tuple[IndexCoding, ...] = ("fixed12", "gap")
DTYPES = ("float32",)  # pseudo-gradients travel as fp32 semantics; extend with care


@dataclass(frozen=True)
class CodecSpec:
    """Parameters of the payload codec, signed in every header.

    `chunk` is the side of a 2-D chunk (64 -> 64x64 = 4096 elements) and the
    length of a 1-D chunk. `k` is the number of entries kept per 2-D chunk;
    1-D chunks keep the same density (see `protocol.sparse.layout`).
    `index_coding` names how positions inside a chunk are written: fixed-width
    (12 bits for 4096-element chunks) or Rice-coded gaps of sorted positions.
    """

    name: CodecName = "sparseloco"
    chunk: int = 64
    k: int = 64
    value_bits: int = 2
    index_coding: IndexCoding = "fixed12"

    def __post_init__(self) -> None:
        if self.name not in CODEC_NAMES:
            raise CodecMismatchError(f"unknown codec {self.name!r}")
        if self.index_coding not in INDEX_CODINGS:
            raise CodecMismatchError(f"unknown index coding {self.index_coding!r}")
        if self.chunk not in (16, 32, 64, 128):
            raise CodecMismatchError(f"chunk side {self.chunk} not in (16, 32, 64, 128)")
        if not 1 <= self.k <= self.chunk * self.chunk:
            raise CodecMismatchError(f"k={self.k} outside [1, {self.chunk * self.chunk}]")
        if self.value_bits != 2:
            raise CodecMismatchError(f"value_bits={self.value_bits}: only 2 is supported")

    def to_wire(self) -> list[canonical.WireValue]:
        return [self.name, self.chunk, self.k, self.value_bits, self.index_coding]

    @classmethod
    def from_wire(cls, value: canonical.WireValue) -> CodecSpec:
        items = canonical.expect_list(value, 5, "codec")
        name = canonical.expect_str(items[0], "codec.name", max_len=16)
        coding = canonical.expect_str(items[4], "codec.index_coding", max_len=16)
        if name not in CODEC_NAMES or coding not in INDEX_CODINGS:
            raise CodecMismatchError(f"unknown codec {name!r}/{coding!r}")
        return cls(
            name=name,
            chunk=canonical.expect_int(items[1], "codec.chunk", hi=4096),
            k=canonical.expect_int(items[2], "codec.k", hi=2**24),
            value_bits=canonical.expect_int(items[3], "codec.value_bits", hi=64),
            index_coding=coding,
        )


@dataclass(frozen=True)
class TensorSpec:
    """One entry of a model's manifest, in the model's fixed parameter order."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 200:
            raise WrongTypeError(f"tensor name {self.name!r} empty or too long")
        if any(not isinstance(d, int) or d <= 0 for d in self.shape):
            raise WrongTypeError(f"tensor {self.name}: bad shape {self.shape}")
        if self.dtype not in DTYPES:
            raise WrongTypeError(f"tensor {self.name}: unsupported dtype {self.dtype}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


Manifest = tuple[TensorSpec, ...]


def manifest_digest(manifest: Iterable[TensorSpec]) -> bytes:
    """SHA-256 of the canonical encoding of (name, shape, dtype) in order.

    The signed header binds the manifest by this digest instead of repeating
    ~30 bytes per tensor in every envelope: every peer of a run already holds
    the manifest (it follows from the model config), and for the `small` model
    the spelled-out list alone would cost more than the whole header budget
    that keeps the wire ratio above 146x (see docs/protocol.md).
    """
    wire = [[t.name, list(t.shape), t.dtype] for t in manifest]
    return hashlib.sha256(canonical.pack(wire)).digest()


def total_elements(manifest: Iterable[TensorSpec]) -> int:
    return sum(t.numel for t in manifest)
