"""The `/gradmesh/blob/1` stream protocol (trio side; imported only by `node.mesh.p2p`).

Request: the 32-byte SHA-256 of the wanted blob. Response: one status byte,
then for OK an 8-byte big-endian length and exactly that many bytes. The
reader caps the length, reads in chunks under an idle deadline and a minimum
rate (a trickling peer is cut off), hashes as it goes and rejects a mismatch.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import trio

BLOB_PROTOCOL = "/gradmesh/blob/1"
OK, NOT_FOUND, BUSY, REFUSED = 0, 1, 2, 3
CHUNK = 1 << 20
_HEADER = 9


class PeerFault(Exception):
    """The remote broke the protocol (garbage, oversize, wrong hash, too slow)."""


class PeerUnavailable(Exception):
    """The remote answered honestly that it cannot serve (not found, busy, gone)."""


@dataclass(frozen=True)
class ReadLimits:
    max_blob_bytes: int
    idle_timeout: float = 5.0  # no byte for this long: cut off
    min_rate: float = 256 * 1024  # bytes/s averaged after the grace period
    grace: float = 2.0


async def read_exact(stream, n: int, idle_timeout: float) -> bytes:  # type: ignore[no-untyped-def]
    buf = bytearray()
    while len(buf) < n:
        with trio.move_on_after(idle_timeout) as cs:
            try:
                piece = await stream.read(n - len(buf))
            except Exception as exc:  # py-libp2p raises on EOF and on resets
                raise PeerUnavailable(f"stream ended: {type(exc).__name__}") from exc
        if cs.cancelled_caught:
            raise PeerFault(f"no data for {idle_timeout}s")
        if not piece:
            raise PeerUnavailable("stream ended early")
        buf += piece
    return bytes(buf)


async def read_response(stream, digest: bytes, expected_size: int | None,  # type: ignore[no-untyped-def]
                        limits: ReadLimits, on_bytes) -> bytes:
    header = await read_exact(stream, _HEADER, limits.idle_timeout)
    status, length = header[0], int.from_bytes(header[1:], "big")
    if status in (NOT_FOUND, BUSY, REFUSED) and length == 0:
        raise PeerUnavailable({NOT_FOUND: "not found", BUSY: "busy", REFUSED: "refused"}[status])
    if status != OK:  # unknown, or a refusal with a body: not what an honest peer sends
        raise PeerFault(f"bad status header (status {status}, length {length})")
    if length > limits.max_blob_bytes:
        raise PeerFault(f"length prefix {length} exceeds cap {limits.max_blob_bytes}")
    if expected_size is not None and length != expected_size:
        raise PeerFault(f"length {length} differs from announced size {expected_size}")
    hasher = hashlib.sha256()
    body = bytearray()
    started = time.monotonic()
    while len(body) < length:
        with trio.move_on_after(limits.idle_timeout) as cs:
            try:
                piece = await stream.read(min(CHUNK, length - len(body)))
            except Exception as exc:
                raise PeerUnavailable(f"stream ended after {len(body)}/{length} bytes: "
                                      f"{type(exc).__name__}") from exc
        if cs.cancelled_caught:
            raise PeerFault(f"stalled for {limits.idle_timeout}s at {len(body)}/{length}")
        if not piece:
            raise PeerUnavailable(f"stream ended after {len(body)}/{length} bytes")
        body += piece
        hasher.update(piece)
        on_bytes(len(piece))
        elapsed = time.monotonic() - started
        if elapsed > limits.grace and len(body) / elapsed < limits.min_rate:
            raise PeerFault(f"too slow: {len(body) / elapsed:.0f} B/s")
    if hasher.digest() != digest:
        raise PeerFault("bytes do not hash to the requested SHA-256")
    return bytes(body)


def response_header(status: int, length: int = 0) -> bytes:
    return bytes([status]) + length.to_bytes(8, "big")


class TokenBucket:
    """Requests per second per peer, with a small burst."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
