"""The mesh's errors: `MeshError` is the root of every one (itself a `NodeError`), and
the built-in a caller already catches is mixed in where one applies (`MeshTimeoutError`
is a `TimeoutError`). No logic here; raised by every `Mesh` implementation alike.
"""

from __future__ import annotations

from node.errors import NodeError


class MeshError(NodeError):
    """Root of every mesh error."""


class MeshTimeoutError(MeshError, TimeoutError):
    """A mesh operation ran past its deadline (also a built-in `TimeoutError`)."""


class MeshStateError(MeshError):
    """The mesh is not started, or already stopped."""


class AddressNotAllowedError(MeshError):
    """A multiaddr is outside the configured allowlist (nothing was dialled)."""


class DialError(MeshError):
    """A peer address could not be dialled (refused, unreachable, malformed, unknown)."""


class BadAnnouncementError(MeshError):
    """An announcement is malformed, oversized or not signed by its announcer."""


class BadRecordError(MeshError):
    """A record is malformed, oversized or not signed by its key's address."""


class BlobTooLargeError(MeshError):
    """A blob exceeds the mesh's size cap."""


class FetchError(MeshError):
    """A blob could not be fetched; `failures` says why, per source tried."""

    def __init__(self, message: str, failures: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failures: dict[str, str] = dict(failures or {})


class FetchTimeoutError(FetchError, MeshTimeoutError):
    """The fetch deadline passed before any source delivered the blob."""


class NoSourceError(FetchError):
    """Every known announcer of the hash failed (or none is known)."""


class HashMismatchError(FetchError):
    """A peer sent bytes whose SHA-256 is not the one asked for."""
