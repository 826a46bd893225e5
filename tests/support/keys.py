"""Deterministic identities for tests."""

from __future__ import annotations

import hashlib

from protocol.identity import Identity


def identity(n: int) -> Identity:
    return Identity.from_secret(hashlib.sha256(f"gradmesh-test-key-{n}".encode()).digest())
