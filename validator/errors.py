"""Typed errors of the validator; every one derives from `ValidatorError`.

A `Rejection` is never fatal: it names why one contribution was refused, and
the service turns it into a slash for that miner and nothing else.
"""

from __future__ import annotations


class ValidatorError(Exception):
    """Root of every error the validator package raises."""


class ConfigError(ValidatorError):
    """A validator configuration value is unusable."""


class StateError(ValidatorError):
    """The persisted state is missing, inconsistent or from another run."""


class StateMismatchError(StateError):
    """The state database at `path` belongs to run `found`, not to run `expected`."""

    def __init__(self, path: str, found: str, expected: str) -> None:
        super().__init__(f"validator state {path} belongs to run {found!r}, not to run "
                         f"{expected!r}: give another --data-dir (or remove it to start over)")
        self.path = path
        self.found = found
        self.expected = expected


class Rejection(ValidatorError):
    """One contribution failed a check; `reason` is a short stable code."""

    reason = "invalid"


class EnvelopeRejected(Rejection):
    """Framing, signature, run, window, codec, manifest or payload hash is wrong."""

    reason = "envelope"


class ReplayRejected(EnvelopeRejected):
    """A validly signed envelope for another window or run."""

    reason = "replay"


class UnknownSigner(Rejection):
    """The signer is not a registered miner."""

    reason = "unregistered"


class LateArrival(Rejection):
    """The contribution arrived after the window's deadline."""

    reason = "late"


class Uncommitted(Rejection):
    """Two-phase publication is on and the signer did not commit to exactly this
    envelope on the chain before the window's release block (node/runtime/publish.py).
    An honest miner never releases an envelope without a timely commitment; a relay
    that re-signs someone else's released envelope cannot have one."""

    reason = "uncommitted"


class Equivocation(Rejection):
    """Two different valid envelopes signed by the same miner for one window: peers
    may have seen either, so neither counts (as in `select`). Only the key's holder
    can sign both, so rejecting it never punishes anyone else."""

    reason = "equivocation"


class MalformedPayload(Rejection):
    """The payload does not decode for the run's codec and manifest."""

    reason = "malformed"


class NonFiniteUpdate(Rejection):
    """The update holds NaN or infinity."""

    reason = "non_finite"


class ScaleRejected(Rejection):
    """The update's norm is far from the honest median (or zero)."""

    reason = "scale"


class CopyRejected(Rejection):
    """The update duplicates (or nearly duplicates) an earlier announcer's."""

    reason = "copy"
