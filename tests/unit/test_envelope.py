from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import SCHEMA_VERSION, canonical
from protocol.envelope import BaseModel, Expectation, Header, open_envelope, read_unverified, seal
from protocol.errors import (
    BadSignatureError,
    CodecMismatchError,
    ManifestMismatchError,
    NonCanonicalError,
    OversizedError,
    PayloadHashMismatchError,
    ProtocolError,
    SignerMismatchError,
    TruncatedError,
    UnsupportedVersionError,
    WrongRunError,
    WrongTypeError,
    WrongWindowError,
)
from protocol.identity import keccak256
from protocol.limits import Limits
from protocol.spec import CodecSpec, TensorSpec
from tests.support.keys import identity

MANIFEST = (TensorSpec("embed.weight", (256, 64)), TensorSpec("norm.weight", (64,)))
CODEC = CodecSpec(index_coding="gap")
BASE = BaseModel(step=3, digest=b"\x11" * 32)
PAYLOAD = bytes(range(256)) * 4
EXPECT = Expectation(run_id="run-a", window=7, codec=CODEC, manifest=MANIFEST)


def sealed(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "run_id": "run-a", "window": 7, "base": BASE, "codec": CODEC,
        "manifest": MANIFEST, "payload": PAYLOAD,
    }  # fmt: skip
    args.update(overrides)
    return seal(identity(1), **args)  # type: ignore[arg-type]


def resealed_with(data: bytes, key_n: int, **header_changes: object) -> bytes:
    """Rewrite header fields and sign with another key (the attacker's tools)."""
    header, _, payload = read_unverified(data)
    header = dataclasses.replace(header, **header_changes)  # type: ignore[arg-type]
    header_bytes = header.encode()
    return canonical.pack([header_bytes, identity(key_n).sign_hash(keccak256(header_bytes)),
                           payload])


def test_round_trip_names_the_signer() -> None:
    envelope = open_envelope(sealed(), EXPECT)
    assert envelope.signer == identity(1).address
    assert envelope.payload == PAYLOAD
    assert envelope.header.base == BASE
    assert envelope.header.codec == CODEC


def test_sealing_is_deterministic() -> None:
    assert sealed() == sealed()


def test_truncated() -> None:
    data = sealed()
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(TruncatedError):
            open_envelope(data[:cut], EXPECT)


def test_oversized_is_rejected_before_parsing() -> None:
    with pytest.raises(OversizedError):
        open_envelope(sealed(), EXPECT, Limits(max_envelope_bytes=512))


def test_wrong_types() -> None:
    for junk in ([1, 2, 3], [b"h", b"s"], "text", [b"\x90", b"\x00" * 65, b""]):
        with pytest.raises(ProtocolError):
            open_envelope(canonical.pack(junk), EXPECT)
    header, signature, payload = read_unverified(sealed())
    wire = header.to_wire()
    wire[2] = "seven"  # window as a string
    with pytest.raises(WrongTypeError):
        open_envelope(canonical.pack([canonical.pack(wire), signature, payload]), EXPECT)


def test_flipped_signature_bit_is_rejected() -> None:
    header, signature, payload = read_unverified(sealed())
    bad = bytes([signature[0] ^ 1]) + signature[1:]
    with pytest.raises((BadSignatureError, SignerMismatchError)):
        open_envelope(canonical.pack([header.encode(), bad, payload]), EXPECT)


def test_foreign_signature_is_rejected() -> None:
    # header still names key 1, but key 2 signed it
    with pytest.raises(SignerMismatchError):
        open_envelope(resealed_with(sealed(), key_n=2), EXPECT)


def test_stolen_payload_resigned_names_the_new_signer() -> None:
    # re-signing someone's payload is possible; the envelope then names the thief
    stolen = resealed_with(sealed(), key_n=2, signer=identity(2).address)
    assert open_envelope(stolen, EXPECT).signer == identity(2).address


def test_replayed_window_and_run() -> None:
    with pytest.raises(WrongWindowError):
        open_envelope(sealed(window=6), EXPECT)
    with pytest.raises(WrongRunError):
        open_envelope(sealed(run_id="run-b"), EXPECT)


def test_mismatched_manifest_and_codec() -> None:
    other = (TensorSpec("embed.weight", (256, 128)), TensorSpec("norm.weight", (64,)))
    with pytest.raises(ManifestMismatchError):
        open_envelope(sealed(manifest=other), EXPECT)
    with pytest.raises(CodecMismatchError):
        open_envelope(sealed(codec=CodecSpec(index_coding="fixed12")), EXPECT)
    with pytest.raises(CodecMismatchError):
        open_envelope(sealed(codec=CodecSpec(k=32, index_coding="gap")), EXPECT)


def test_tampered_payload() -> None:
    header, signature, payload = read_unverified(sealed())
    tampered = bytes([payload[0] ^ 1]) + payload[1:]
    with pytest.raises(PayloadHashMismatchError):
        open_envelope(canonical.pack([header.encode(), signature, tampered]), EXPECT)
    with pytest.raises(PayloadHashMismatchError):
        open_envelope(canonical.pack([header.encode(), signature, payload + b"x"]), EXPECT)


def test_unsupported_version() -> None:
    with pytest.raises(UnsupportedVersionError):
        open_envelope(resealed_with(sealed(), key_n=1, schema_version=SCHEMA_VERSION + 1),
                      EXPECT)
    with pytest.raises(UnsupportedVersionError):  # schema 1: the base had no proof
        open_envelope(resealed_with(sealed(), key_n=1, schema_version=1), EXPECT)


def test_the_base_proof_travels_signed_and_has_a_fixed_size() -> None:
    proof = bytes(range(32))
    opened = open_envelope(sealed(base=BaseModel(3, b"\x11" * 32, proof)), EXPECT)
    assert opened.header.base.proof == proof
    assert open_envelope(sealed(), EXPECT).header.base.proof == b""
    with pytest.raises(WrongTypeError):
        open_envelope(sealed(base=BaseModel(3, b"\x11" * 32, b"short")), EXPECT)


def test_non_canonical_header_bytes() -> None:
    header, signature, payload = read_unverified(sealed())
    header_bytes = header.encode()
    # respell the fixint window 7 as uint8: same value, different bytes
    wide = header_bytes.replace(b"\xa5run-a\x07", b"\xa5run-a\xcc\x07", 1)
    assert wide != header_bytes
    with pytest.raises(NonCanonicalError):
        Header.decode(wide)
    with pytest.raises(NonCanonicalError):
        open_envelope(canonical.pack([wide, signature, payload]), EXPECT)


@given(st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_decoder_never_crashes(data: st.DataObject) -> None:
    original = bytearray(sealed())
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(original) - 1))
        original[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    try:
        envelope = open_envelope(bytes(original[:cut]), EXPECT)
    except ProtocolError:
        return
    # anything accepted must still be a genuine, unaltered envelope of key 1
    assert envelope.signer == identity(1).address
    assert envelope.payload == PAYLOAD


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_fuzz_random_bytes(blob: bytes) -> None:
    with pytest.raises(ProtocolError):
        open_envelope(blob, EXPECT)
