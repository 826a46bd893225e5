"""Model checkpoints a late-joining miner can fetch from untrusted peers.

θ is serialised as fp32 little-endian bytes, parameter after parameter, so its
SHA-256 equals the θ digest (`node.outer.step.params_digest`) of the same model. The bytes are
cut into fixed-size chunks; a signed `CheckpointManifest` names every chunk's
SHA-256, so a fetcher can verify (and blame) each chunk as it arrives instead
of trusting a multi-gigabyte blob only once it is complete.

The local on-disk store lives in `node.engine.store`; both share the checkpoint
errors of `node.errors` and `fp32_bytes`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from node.engine.store import fp32_bytes
from node.errors import CheckpointError
from protocol import canonical
from protocol.errors import ProtocolError
from protocol.identity import ADDRESS_LEN, SIGNATURE_LEN, Identity, keccak256, recover_signer
from protocol.spec import Manifest, manifest_digest

MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_TOTAL_BYTES = 2**36  # 64 GiB of fp32: a ~17B-parameter model
MAX_MANIFEST_BYTES = 64 * 1024
MAX_RUN_LEN = 64
MAX_MODEL_LEN = 32
_FORMAT_VERSION = 1
_DOMAIN = "gradmesh/checkpoint/1"
_HASH_WIRE_LEN = 34  # a 32-byte bin8 in msgpack: 2 tag bytes + payload
_U63 = 2**63 - 1
_FP32 = np.dtype("<f4")


class BadManifestError(CheckpointError):
    """A checkpoint manifest is malformed, inconsistent, unexpected or not signed by its signer."""


class ChunkMismatchError(CheckpointError):
    """A chunk has the wrong index, length or SHA-256; `index` says which one."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class DigestMismatchError(CheckpointError):
    """Assembled bytes do not hash to the manifest's param digest."""


class ShapeMismatchError(CheckpointError):
    """Parameter bytes or tensors do not fit the expected shapes."""


# --- parameters <-> bytes -------------------------------------------------------------


def serialize_params(params: Sequence[torch.Tensor]) -> bytes:
    """fp32 little-endian bytes of every tensor, concatenated in order."""
    return b"".join(fp32_bytes(p) for p in params)


def _check_shape(shape: Sequence[int]) -> None:
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise ShapeMismatchError(f"bad shape {tuple(shape)!r}")


def deserialize_params(data: bytes | bytearray | memoryview,
                       shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """Inverse of `serialize_params`; tensors own (copies of) their memory and are writable."""
    for shape in shapes:
        _check_shape(shape)
    counts = [math.prod(shape) for shape in shapes]
    if len(data) != 4 * sum(counts):
        raise ShapeMismatchError(f"{len(data)} bytes do not hold {sum(counts)} fp32 values")
    tensors, offset = [], 0
    for shape, count in zip(shapes, counts, strict=True):
        values = np.frombuffer(data, dtype=_FP32, count=count, offset=offset)
        # copy: the input buffer may be read-only or reused by the caller
        tensors.append(torch.from_numpy(values.astype(np.float32, copy=True)).reshape(shape))
        offset += 4 * count
    return tensors


def sha256(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


# --- the signed manifest ------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointManifest:
    """Signed statement: θ at the start of `window` is these chunks, hashing to `param_digest`."""

    run: str
    window: int
    model: str  # model config name, e.g. "tiny"
    manifest_digest: bytes  # protocol.spec.manifest_digest of the model's tensor manifest
    param_digest: bytes  # SHA-256 of serialize_params(θ)
    total_bytes: int
    chunk_size: int
    chunk_hashes: tuple[bytes, ...]
    signer: bytes  # 20-byte address
    signature: bytes = field(default=b"", repr=False)

    def _fields(self) -> list[canonical.WireValue]:
        return [self.run, self.window, self.model, self.manifest_digest, self.param_digest,
                self.total_bytes, self.chunk_size, list(self.chunk_hashes), self.signer]

    def signing_hash(self) -> bytes:
        return keccak256(canonical.pack([_DOMAIN, *self._fields()]))

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_hashes)

    def chunk_length(self, index: int) -> int:
        """Byte length of chunk `index` (every chunk is full except possibly the last)."""
        if not 0 <= index < self.chunk_count:
            raise ChunkMismatchError(f"chunk index {index} outside [0, {self.chunk_count})", index)
        return min(self.chunk_size, self.total_bytes - index * self.chunk_size)

    @classmethod
    def create(cls, identity: Identity, *, run: str, window: int, model: str,
               manifest_digest: bytes, param_digest: bytes, total_bytes: int, chunk_size: int,
               chunk_hashes: Sequence[bytes]) -> CheckpointManifest:
        unsigned = cls(run=run, window=window, model=model, manifest_digest=manifest_digest,
                       param_digest=param_digest, total_bytes=total_bytes,
                       chunk_size=chunk_size, chunk_hashes=tuple(chunk_hashes),
                       signer=identity.address)
        unsigned.check_consistent()  # never sign something decode would refuse
        signed = replace(unsigned, signature=identity.sign_hash(unsigned.signing_hash()))
        signed.verify()
        return signed

    def encode(self) -> bytes:
        return canonical.pack([_FORMAT_VERSION, *self._fields(), self.signature])

    @classmethod
    def decode(cls, data: bytes, *, max_bytes: int = MAX_MANIFEST_BYTES) -> CheckpointManifest:
        """Parse and verify (shape, caps, consistency, signature); raise `BadManifestError`."""
        try:
            manifest = cls._from_wire(canonical.unpack(
                data, max_bytes=max_bytes, max_bin_len=SIGNATURE_LEN,
                max_array_len=max(11, max_bytes // _HASH_WIRE_LEN), max_str_len=MAX_RUN_LEN))
        except ProtocolError as exc:
            raise BadManifestError(f"malformed checkpoint manifest: {exc}") from exc
        manifest.check_consistent()
        manifest.verify()
        return manifest

    @classmethod
    def _from_wire(cls, value: canonical.WireValue) -> CheckpointManifest:
        items = canonical.expect_list(value, 11, "checkpoint manifest")
        if canonical.expect_int(items[0], "version") != _FORMAT_VERSION:
            raise BadManifestError(f"unsupported checkpoint manifest version {items[0]}")
        hashes = items[8]
        if not isinstance(hashes, list):
            raise BadManifestError("chunk_hashes: expected an array")
        return cls(
            run=canonical.expect_str(items[1], "run", max_len=MAX_RUN_LEN),
            window=canonical.expect_int(items[2], "window", hi=_U63),
            model=canonical.expect_str(items[3], "model", max_len=MAX_MODEL_LEN),
            manifest_digest=canonical.expect_bytes(items[4], "manifest_digest", length=32),
            param_digest=canonical.expect_bytes(items[5], "param_digest", length=32),
            total_bytes=canonical.expect_int(items[6], "total_bytes", hi=_U63),
            chunk_size=canonical.expect_int(items[7], "chunk_size", hi=_U63),
            chunk_hashes=tuple(canonical.expect_bytes(h, "chunk hash", length=32)
                               for h in hashes),
            signer=canonical.expect_bytes(items[9], "signer", length=ADDRESS_LEN),
            signature=canonical.expect_bytes(items[10], "signature", length=SIGNATURE_LEN),
        )

    def check_consistent(self) -> None:
        """Field ranges and the chunk count implied by total_bytes / chunk_size."""
        problem = _inconsistency(self)
        if problem:
            raise BadManifestError(f"checkpoint manifest: {problem}")

    def verify(self) -> None:
        try:
            signer = recover_signer(self.signing_hash(), self.signature)
        except ProtocolError as exc:
            raise BadManifestError(f"checkpoint manifest signature: {exc}") from exc
        if signer != self.signer:
            raise BadManifestError("checkpoint manifest is not signed by its signer")

    def expect(self, *, run: str, model: str, manifest_digest: bytes,
               signers: Collection[bytes] | None = None) -> None:
        """Refuse a validly signed manifest for another run, model shape or signer set."""
        if (self.run, self.model, self.manifest_digest) != (run, model, manifest_digest):
            raise BadManifestError(f"checkpoint is for run {self.run!r} model {self.model!r}, "
                                   "or another tensor manifest")
        if signers is not None and self.signer not in signers:
            raise BadManifestError(f"checkpoint signer {self.signer.hex()} is not trusted")


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


def _inconsistency(m: CheckpointManifest) -> str | None:
    # byte lengths: that is what decode's msgpack string cap counts
    if not (0 < _utf8_len(m.run) <= MAX_RUN_LEN and 0 < _utf8_len(m.model) <= MAX_MODEL_LEN):
        return "run or model name empty or too long"
    if not 0 <= m.window <= _U63:
        return f"window {m.window} out of range"
    if len(m.manifest_digest) != 32 or len(m.param_digest) != 32 or len(m.signer) != ADDRESS_LEN:
        return "digest or signer of the wrong length"
    if not MIN_CHUNK_SIZE <= m.chunk_size <= MAX_CHUNK_SIZE:
        return f"chunk_size {m.chunk_size} outside [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]"
    if not 0 < m.total_bytes <= MAX_TOTAL_BYTES or m.total_bytes % 4:
        return f"total_bytes {m.total_bytes} is not a positive fp32 size <= {MAX_TOTAL_BYTES}"
    if m.chunk_count != -(-m.total_bytes // m.chunk_size):
        return f"{m.chunk_count} chunk hashes for {m.total_bytes} bytes in {m.chunk_size}s"
    if any(len(h) != 32 for h in m.chunk_hashes):
        return "chunk hash of the wrong length"
    return None


# --- producing and assembling --------------------------------------------------------


def make_checkpoint(identity: Identity, *, run: str, window: int, model: str, manifest: Manifest,
                    params: Sequence[torch.Tensor], chunk_size: int = DEFAULT_CHUNK_SIZE
                    ) -> tuple[CheckpointManifest, list[bytes]]:
    """Serialise `params` (which must match `manifest`), chunk them and sign the manifest."""
    shapes = [tuple(p.shape) for p in params]
    if shapes != [spec.shape for spec in manifest]:
        raise ShapeMismatchError("parameters do not match the tensor manifest")
    data = serialize_params(params)
    chunks = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)]
    signed = CheckpointManifest.create(
        identity, run=run, window=window, model=model, manifest_digest=manifest_digest(manifest),
        param_digest=sha256(data), total_bytes=len(data), chunk_size=chunk_size,
        chunk_hashes=[sha256(c) for c in chunks])
    return signed, chunks


def verify_chunk(manifest: CheckpointManifest, index: int, data: bytes) -> None:
    """Raise `ChunkMismatchError` unless `data` is exactly chunk `index` of `manifest`."""
    expected = manifest.chunk_length(index)
    if len(data) != expected:
        raise ChunkMismatchError(f"chunk {index}: {len(data)} bytes, expected {expected}", index)
    if sha256(data) != manifest.chunk_hashes[index]:
        raise ChunkMismatchError(f"chunk {index}: SHA-256 mismatch", index)


def assemble(manifest: CheckpointManifest, chunks: Sequence[bytes]) -> bytes:
    """Verified parameter bytes from all chunks, in order."""
    if len(chunks) != manifest.chunk_count:
        raise ChunkMismatchError(f"{len(chunks)} chunks, expected {manifest.chunk_count}")
    for index, chunk in enumerate(chunks):
        verify_chunk(manifest, index, chunk)
    data = b"".join(chunks)
    # chunks matched, so only a signer that hashed inconsistently can get here
    if sha256(data) != manifest.param_digest:
        raise DigestMismatchError("assembled checkpoint does not match its param digest")
    return data


def restore_params(manifest: CheckpointManifest, chunks: Sequence[bytes],
                   expected: Manifest) -> list[torch.Tensor]:
    """Assemble and deserialise, refusing a checkpoint built for another tensor manifest."""
    if manifest.manifest_digest != manifest_digest(expected):
        raise BadManifestError("checkpoint was built for another tensor manifest")
    return deserialize_params(assemble(manifest, chunks), [spec.shape for spec in expected])
