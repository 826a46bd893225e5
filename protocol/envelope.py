"""The signed envelope every contribution travels in.

Wire form: canonical msgpack `[header_bytes, signature, payload]`.
`header_bytes` is itself canonical msgpack of the header fields; the signature
is over keccak256(header_bytes) (EIP-191), and the header carries the payload's
SHA-256, so one signature covers everything. Run id and window are inside the
signed header: a valid envelope replayed into another run or window is
rejected by `open_envelope`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from protocol import SCHEMA_VERSION, canonical
from protocol.baseproof import PROOF_LEN
from protocol.dense import BYTES_PER_VALUE
from protocol.errors import (
    CodecMismatchError,
    ManifestMismatchError,
    OversizedError,
    PayloadHashMismatchError,
    SignerMismatchError,
    UnsupportedVersionError,
    WrongRunError,
    WrongTypeError,
    WrongWindowError,
)
from protocol.identity import ADDRESS_LEN, SIGNATURE_LEN, Identity, keccak256, recover_signer
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.sparse import payload_cap
from protocol.spec import CodecSpec, Manifest, manifest_digest, total_elements

_HEADER_FIELDS = 11
_U64 = 2**64 - 1


@dataclass(frozen=True)
class BaseModel:
    """Fingerprint of the global model a contribution was computed from, and the
    author's proof that it holds it (protocol/baseproof.py; empty: no claim)."""

    step: int
    digest: bytes  # 32 bytes, e.g. SHA-256 of the parameters
    proof: bytes = b""  # 0 or PROOF_LEN bytes


@dataclass(frozen=True)
class Header:
    run_id: str
    window: int
    signer: bytes
    base: BaseModel
    codec: CodecSpec
    manifest_digest: bytes
    n_tensors: int
    payload_len: int
    payload_hash: bytes
    created_ms: int = 0  # sender's claim, informative only: never trusted for timing
    schema_version: int = SCHEMA_VERSION

    def to_wire(self) -> list[canonical.WireValue]:
        return [
            self.schema_version, self.run_id, self.window, self.signer,
            [self.base.step, self.base.digest, self.base.proof], self.codec.to_wire(),
            self.manifest_digest,
            self.n_tensors, self.payload_len, self.payload_hash, self.created_ms,
        ]  # fmt: skip

    def encode(self) -> bytes:
        return canonical.pack(self.to_wire())

    @classmethod
    def decode(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> Header:
        value = canonical.unpack(
            data, max_bytes=limits.max_header_bytes, max_bin_len=64,
            max_str_len=limits.max_run_id_len, max_array_len=_HEADER_FIELDS,
        )  # fmt: skip
        items = canonical.expect_list(value, _HEADER_FIELDS, "header")
        version = canonical.expect_int(items[0], "schema_version", hi=_U64)
        if version != SCHEMA_VERSION:
            raise UnsupportedVersionError(f"schema {version}; this node speaks {SCHEMA_VERSION}")
        base = canonical.expect_list(items[4], 3, "base")
        proof = canonical.expect_bytes(base[2], "base.proof", max_len=PROOF_LEN)
        if len(proof) not in (0, PROOF_LEN):
            raise WrongTypeError(f"base.proof: {len(proof)} bytes, expected 0 or {PROOF_LEN}")
        return cls(
            schema_version=version,
            run_id=canonical.expect_str(items[1], "run_id", max_len=limits.max_run_id_len),
            window=canonical.expect_int(items[2], "window", hi=_U64),
            signer=canonical.expect_bytes(items[3], "signer", length=ADDRESS_LEN),
            base=BaseModel(
                step=canonical.expect_int(base[0], "base.step", hi=_U64),
                digest=canonical.expect_bytes(base[1], "base.digest", length=32),
                proof=proof,
            ),
            codec=CodecSpec.from_wire(items[5]),
            manifest_digest=canonical.expect_bytes(items[6], "manifest_digest", length=32),
            n_tensors=canonical.expect_int(items[7], "n_tensors", hi=limits.max_tensors),
            payload_len=canonical.expect_int(
                items[8], "payload_len", hi=limits.max_envelope_bytes
            ),
            payload_hash=canonical.expect_bytes(items[9], "payload_hash", length=32),
            created_ms=canonical.expect_int(items[10], "created_ms", hi=_U64),
        )


@dataclass(frozen=True)
class Envelope:
    """A verified envelope: the signer is the address the signature recovers to."""

    header: Header
    signature: bytes
    payload: bytes

    @property
    def signer(self) -> bytes:
        return self.header.signer


@dataclass(frozen=True)
class Expectation:
    """What the receiver expects of an envelope for the current window."""

    run_id: str
    window: int
    codec: CodecSpec
    manifest: Manifest


def seal(
    identity: Identity,
    *,
    run_id: str,
    window: int,
    base: BaseModel,
    codec: CodecSpec,
    manifest: Manifest,
    payload: bytes,
    created_ms: int = 0,
) -> bytes:
    """Sign and frame a payload; returns the wire bytes."""
    header = Header(
        run_id=run_id, window=window, signer=identity.address, base=base, codec=codec,
        manifest_digest=manifest_digest(manifest), n_tensors=len(manifest),
        payload_len=len(payload), payload_hash=hashlib.sha256(payload).digest(),
        created_ms=created_ms,
    )  # fmt: skip
    header_bytes = header.encode()
    signature = identity.sign_hash(keccak256(header_bytes))
    return canonical.pack([header_bytes, signature, payload])


def read_unverified(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Header, bytes, bytes]:
    """Split wire bytes into (header, signature, payload) without trusting them."""
    if len(data) > limits.max_envelope_bytes:
        raise OversizedError(f"envelope of {len(data)} bytes exceeds {limits.max_envelope_bytes}")
    value = canonical.unpack(
        data, max_bytes=limits.max_envelope_bytes, max_bin_len=limits.max_envelope_bytes,
        max_array_len=3,
    )  # fmt: skip
    items = canonical.expect_list(value, 3, "envelope")
    header_bytes = canonical.expect_bytes(
        items[0], "header", max_len=limits.max_header_bytes
    )
    signature = canonical.expect_bytes(items[1], "signature", length=SIGNATURE_LEN)
    payload = canonical.expect_bytes(items[2], "payload", max_len=limits.max_envelope_bytes)
    return Header.decode(header_bytes, limits), signature, payload


def open_envelope(
    data: bytes, expect: Expectation, limits: Limits = DEFAULT_LIMITS
) -> Envelope:
    """Verify wire bytes against `expect`; raise a typed `ProtocolError` on any fault.

    Order: framing, signature, replay (run, window), codec, manifest, payload hash —
    nothing in the header is believed before the signature checks out.
    """
    header, signature, payload = read_unverified(data, limits)
    signer = recover_signer(keccak256(header.encode()), signature)
    if signer != header.signer:
        raise SignerMismatchError(
            f"signature recovers to 0x{signer.hex()}, header names 0x{header.signer.hex()}"
        )
    if header.run_id != expect.run_id:
        raise WrongRunError(f"run {header.run_id!r}, expected {expect.run_id!r}")
    if header.window != expect.window:
        raise WrongWindowError(f"window {header.window}, expected {expect.window}")
    if header.codec != expect.codec:
        raise CodecMismatchError(f"codec {header.codec}, run uses {expect.codec}")
    if (
        header.manifest_digest != manifest_digest(expect.manifest)
        or header.n_tensors != len(expect.manifest)
    ):
        raise ManifestMismatchError(
            f"manifest {header.manifest_digest.hex()[:16]}… ({header.n_tensors} tensors) "
            f"differs from the expected model ({len(expect.manifest)} tensors)"
        )
    if header.payload_len != len(payload):
        raise PayloadHashMismatchError(
            f"payload is {len(payload)} bytes, header says {header.payload_len}"
        )
    if hashlib.sha256(payload).digest() != header.payload_hash:
        raise PayloadHashMismatchError("payload does not match the signed hash")
    return Envelope(header=header, signature=signature, payload=payload)


ENVELOPE_FRAMING = 64  # msgpack framing of [header, signature, payload]


def limits_for(manifest: Manifest, codec: CodecSpec, base: Limits = DEFAULT_LIMITS) -> Limits:
    """The caps of one run: no valid envelope is larger than the codec's largest payload
    for `manifest` plus a header and a signature, so that is the envelope cap (a 72B
    contribution needs ~1.3 GiB; a `tiny` one refuses anything over ~22 KiB)."""
    if codec.name == "sparseloco":
        payload = payload_cap(manifest, codec)
    else:  # dense fp32, every element
        payload = BYTES_PER_VALUE * total_elements(manifest) + ENVELOPE_FRAMING
    cap = payload + base.max_header_bytes + SIGNATURE_LEN + ENVELOPE_FRAMING
    return replace(base, max_envelope_bytes=cap)

