"""Typed errors of the node package; every one derives from `NodeError`."""

from __future__ import annotations


class NodeError(Exception):
    """Root of every error the node raises on bad configuration or input."""


class ConfigError(NodeError):
    """A configuration value is unknown or out of range."""


class DataError(NodeError):
    """Training data is missing, malformed, or fails its recorded hashes."""


class KeyFileError(NodeError):
    """A key file cannot be read, written or trusted."""


class InsecureKeyFileError(KeyFileError):
    """A key file is readable or writable by group or others."""


class CheckpointError(NodeError):
    """Root of every checkpoint error (the signed format and the local store)."""


class CorruptCheckpointError(CheckpointError):
    """A local checkpoint file is truncated, malformed or fails its content hash."""


class EngineError(NodeError):
    """The engine was asked for something its state does not allow."""
