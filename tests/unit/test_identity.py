from __future__ import annotations

import hashlib

import pytest

from protocol.errors import BadSignatureError, MalformedKeyError
from protocol.identity import (
    SECP256K1_N,
    Identity,
    checksum_address,
    format_private_key,
    parse_private_key,
    recover_signer,
)
from tests.support.keys import identity

MSG = hashlib.sha256(b"window 7").digest()


def test_known_address_vector() -> None:
    # the address of private key 1 is a well-known Ethereum test vector
    key = Identity.from_secret((1).to_bytes(32, "big"))
    assert key.address_hex == "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"


def test_eip55_checksum_vector() -> None:
    raw = bytes.fromhex("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")
    assert checksum_address(raw) == "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def test_signature_recovers_signer() -> None:
    key = identity(1)
    signature = key.sign_hash(MSG)
    assert len(signature) == 65
    assert recover_signer(MSG, signature) == key.address


def test_signature_over_other_message_recovers_someone_else() -> None:
    key = identity(1)
    other = hashlib.sha256(b"window 8").digest()
    assert recover_signer(other, key.sign_hash(MSG)) != key.address


def test_high_s_signature_is_rejected() -> None:
    signature = identity(2).sign_hash(MSG)
    s = int.from_bytes(signature[32:64], "big")
    flipped = signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([signature[64] ^ 1])
    with pytest.raises(BadSignatureError, match="low-s"):
        recover_signer(MSG, flipped)


@pytest.mark.parametrize("signature", [b"", b"\x00" * 64, b"\x00" * 65, b"\xff" * 65])
def test_malformed_signatures_are_typed(signature: bytes) -> None:
    with pytest.raises(BadSignatureError):
        recover_signer(MSG, signature)


def test_private_key_text_round_trip() -> None:
    key = identity(3)
    assert parse_private_key(format_private_key(key)) == key
    assert parse_private_key("  " + key.secret.hex() + "\n") == key


@pytest.mark.parametrize(
    "text",
    ["", "0x1234", "zz" * 32, "0x" + "00" * 32, "0x" + f"{SECP256K1_N:064x}", "0x" + "ff" * 33],
)
def test_malformed_private_keys_are_typed(text: str) -> None:
    with pytest.raises(MalformedKeyError):
        parse_private_key(text)
