"""A validated sparse payload that keeps only its packed bytes.

`decode_payload` returns every tensor's int64 indices at once: about 7x the payload's
size (129 MiB for a 1B model's 18 MiB contribution, ~9 GiB at 72B). A node that holds
the contributions of a whole window, and applies them one tensor at a time, keeps
`SparsePayload`s instead: validation walks every tensor once (so a defect is found
before the payload counts), then tensor t is decoded again each time it is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.sparse.codec import SparseTensor, open_frame, read_all, read_tensor, sparse_norm
from protocol.spec import CodecSpec, Manifest


class SparsePayload(Sequence[SparseTensor]):
    """The tensors of a payload, each decoded when read (raises `ProtocolError` on any
    defect at construction, exactly where `decode_payload` would). `norms[t]` is
    `sparse_norm` of tensor t, computed during validation."""

    def __init__(self, payload: bytes, manifest: Manifest, spec: CodecSpec,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self._frame = open_frame(payload, manifest, spec, limits)
        offsets: list[int] = []
        norms: list[float] = []
        for offset, st in read_all(self._frame):
            offsets.append(offset)
            norms.append(sparse_norm(st))
        self._offsets = offsets
        self.norms: tuple[float, ...] = tuple(norms)

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, index: int) -> SparseTensor: ...

    @overload
    def __getitem__(self, index: slice) -> list[SparseTensor]: ...

    def __getitem__(self, index: int | slice) -> SparseTensor | list[SparseTensor]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        t = range(len(self))[index]  # negative indices; IndexError past the end
        return read_tensor(self._frame, t, self._offsets[t])[0]

    @property
    def packed_bytes(self) -> int:
        """Bytes held: the index and value sections plus the tables."""
        frame = self._frame
        return frame.indices.numel() + frame.values.numel() + 4 * frame.tables.numel()
