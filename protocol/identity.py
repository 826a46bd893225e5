"""secp256k1 identities: the Ethereum address of a node's chain key is its id.

Signatures are 65 bytes (r ‖ s ‖ recovery id), low-s only, and recover to the
signer's address, so a header names its signer and the signature proves it.
Messages are signed in the EIP-191 "personal message" form over a 32-byte
digest, which a contract can check with `ecrecover`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import coincurve
from eth_hash.auto import keccak

from protocol.errors import BadSignatureError, MalformedKeyError

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SIGNATURE_LEN = 65
ADDRESS_LEN = 20
_EIP191_PREFIX = b"\x19Ethereum Signed Message:\n32"


def keccak256(data: bytes) -> bytes:
    return keccak(data)


def address_from_public_key(public_key: coincurve.PublicKey) -> bytes:
    """Last 20 bytes of keccak256 of the uncompressed point without its 0x04 tag."""
    return keccak256(public_key.format(compressed=False)[1:])[-ADDRESS_LEN:]


def checksum_address(address: bytes) -> str:
    """EIP-55 mixed-case hex spelling of a 20-byte address."""
    if len(address) != ADDRESS_LEN:
        raise MalformedKeyError(f"address must be {ADDRESS_LEN} bytes")
    hex_addr = address.hex()
    digest = keccak256(hex_addr.encode()).hex()
    pairs = zip(hex_addr, digest[:40], strict=True)
    spelled = (c.upper() if int(d, 16) >= 8 else c for c, d in pairs)
    return "0x" + "".join(spelled)


def personal_digest(message_hash: bytes) -> bytes:
    """EIP-191 digest of a 32-byte message hash (what `ecrecover` verifies)."""
    if len(message_hash) != 32:
        raise BadSignatureError("message hash must be 32 bytes")
    return keccak256(_EIP191_PREFIX + message_hash)


@dataclass(frozen=True)
class Identity:
    """A private key and the address it controls. Build with `from_secret`."""

    secret: bytes = field(repr=False)
    address: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> Identity:
        if not isinstance(secret, bytes) or len(secret) != 32:
            raise MalformedKeyError("a private key is exactly 32 bytes")
        scalar = int.from_bytes(secret, "big")
        if not 0 < scalar < SECP256K1_N:
            raise MalformedKeyError("private key scalar outside [1, n-1]")
        key = coincurve.PrivateKey(secret)
        return cls(secret=secret, address=address_from_public_key(key.public_key))

    @property
    def address_hex(self) -> str:
        return checksum_address(self.address)

    def sign_hash(self, message_hash: bytes) -> bytes:
        """Sign the EIP-191 digest of `message_hash`; returns r ‖ s ‖ v (v ∈ {0, 1})."""
        key = coincurve.PrivateKey(self.secret)
        return key.sign_recoverable(personal_digest(message_hash), hasher=None)


def recover_signer(message_hash: bytes, signature: bytes) -> bytes:
    """Address whose key produced `signature` over `message_hash`."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LEN:
        raise BadSignatureError(f"signature must be {SIGNATURE_LEN} bytes")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N // 2) or signature[64] > 1:
        # high-s would let anyone re-spell a valid signature (malleability)
        raise BadSignatureError("signature is not a canonical low-s secp256k1 signature")
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(
            signature, personal_digest(message_hash), hasher=None
        )
    except Exception as exc:  # coincurve raises plain Exception/ValueError
        raise BadSignatureError(f"signature does not recover a public key: {exc}") from exc
    return address_from_public_key(public_key)


def parse_private_key(text: str) -> Identity:
    """Read a key file's text: 64 hex digits, optional 0x, surrounding whitespace."""
    body = text.strip()
    body = body.removeprefix("0x").removeprefix("0X")
    if len(body) != 64:
        raise MalformedKeyError(f"expected 64 hex digits, found {len(body)} characters")
    try:
        secret = bytes.fromhex(body)
    except ValueError as exc:
        raise MalformedKeyError("key text is not hexadecimal") from exc
    return Identity.from_secret(secret)


def format_private_key(identity: Identity) -> str:
    return "0x" + identity.secret.hex() + "\n"
