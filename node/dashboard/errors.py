"""Typed errors of the dashboard; every one derives from `DashboardError`."""

from __future__ import annotations


class DashboardError(Exception):
    """Root of every error the dashboard raises."""


class SnapshotUnavailable(DashboardError):
    """A provider could not produce a snapshot right now (the page answers 503)."""


class RemoteNodeError(DashboardError):
    """A polled node did not give a usable snapshot; `url` names it."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(f"{url}: {message}")
        self.url = url
        self.reason = message


class NodeUnreachable(RemoteNodeError):
    """Connection refused, reset, timed out, or a non-200 answer."""


class ResponseTooLarge(RemoteNodeError):
    """The node's answer exceeded the size cap; it was not read further."""


class MalformedSnapshot(RemoteNodeError):
    """The answer was not JSON, or its shape or types do not match `node.status`."""


class SchemaMismatch(DashboardError):
    """A JSON value does not match the snapshot schema; `path` locates it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
