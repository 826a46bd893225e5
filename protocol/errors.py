"""Typed errors of the wire protocol; every one derives from `ProtocolError`.

A decoder never raises anything else on bad input: callers catch `ProtocolError`
to reject a peer's bytes without losing the daemon.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error raised for bad wire input or bad protocol usage."""


# --- framing -----------------------------------------------------------------
class DecodeError(ProtocolError):
    """The bytes are not a well-formed message."""


class TruncatedError(DecodeError):
    """The message ends before its declared content."""


class OversizedError(DecodeError):
    """A length or count exceeds a cap (checked before allocating)."""


class WrongTypeError(DecodeError):
    """A field has the wrong type or arity."""


class NonCanonicalError(DecodeError):
    """The bytes decode but are not the canonical encoding of their value."""


class UnsupportedVersionError(DecodeError):
    """The schema version is not one this node speaks."""


# --- identity ------------------------------------------------------------------
class SignatureError(ProtocolError):
    """A signature is malformed, does not verify, or names another signer."""


class BadSignatureError(SignatureError):
    """The signature bytes are malformed or do not recover to a public key."""


class SignerMismatchError(SignatureError):
    """The signature recovers to an address other than the header's signer."""


class KeyMaterialError(ProtocolError):
    """Key material is unusable."""


class MalformedKeyError(KeyMaterialError):
    """Key material is not a valid secp256k1 private key."""



# --- envelope semantics -----------------------------------------------------------
class ReplayError(ProtocolError):
    """A validly signed envelope for another run or window."""


class WrongRunError(ReplayError):
    """The signed run id is not the expected run."""


class WrongWindowError(ReplayError):
    """The signed window is not the expected window."""


class ManifestMismatchError(ProtocolError):
    """The envelope's tensor manifest differs from the expected model."""


class CodecMismatchError(ProtocolError):
    """The envelope's codec parameters are unsupported or differ from the run's."""


class PayloadHashMismatchError(ProtocolError):
    """The payload does not hash to the signed payload hash."""


# --- payload content -------------------------------------------------------------
class PayloadError(ProtocolError):
    """The payload is framed correctly but its content is invalid."""


class NonFiniteValueError(PayloadError):
    """A NaN or infinity where a finite number is required."""


class IndexOutOfRangeError(PayloadError):
    """A sparse index points outside its chunk."""


class DuplicateIndexError(PayloadError):
    """A sparse index appears twice in one chunk."""


class WrongKError(PayloadError):
    """A chunk does not carry exactly k entries."""
