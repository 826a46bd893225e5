"""The `/gradmesh/blob/2` stream protocol (trio side; imported only by `node.mesh.p2p*`).

Request: the 32-byte SHA-256 of the wanted blob and an 8-byte big-endian
offset. Response: one status byte, then for OK an 8-byte big-endian length
(of the whole blob) and exactly `length - offset` bytes, the blob from the
offset on. The reader caps the length, reads in chunks under an idle
deadline and a minimum rate (a trickling peer is cut off), hashes as it goes
(the hash state survives a source change, so a resumed transfer is still
checked against the SHA-256 of the whole blob) and rejects a mismatch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

BLOB_PROTOCOL = "/gradmesh/blob/2"
OK, NOT_FOUND, BUSY, REFUSED = 0, 1, 2, 3
CHUNK = 1 << 20
REQUEST_LEN = 40  # sha256 + offset
_HEADER = 9


class PeerFault(Exception):
    """The remote broke the protocol (garbage, oversize, wrong hash, too slow)."""


class PeerTooSlow(PeerFault):
    """The remote sent too little for too long. Judged on timing alone, which an honest
    peer behind a congested link or on a loaded machine shows too, so it costs a small
    score and this fetch's use of the source, never the connection."""


class PeerUnavailable(Exception):
    """The remote answered honestly that it cannot serve (not found, busy, gone)."""


@dataclass(frozen=True)
class ReadLimits:
    max_blob_bytes: int
    idle_timeout: float = 5.0  # no byte for this long: cut off
    min_rate: float = 256 * 1024  # bytes/s averaged after the grace period
    grace: float = 2.0


@dataclass
class Partial:
    """What a fetch holds so far: the next source is asked from `offset` on.

    The bytes are kept as the chunks they came in (joined once, by `blob`): appending
    to one growing buffer copied it whole at every growth, ~0.7 CPU s per GiB on the
    loopback benchmark. `sources` records (peer, first offset, bytes) per source that
    contributed.
    """

    chunks: list[bytes] = field(default_factory=list)
    hasher: Any = field(default_factory=hashlib.sha256)
    length: int | None = None
    sources: list[tuple[str, int, int]] = field(default_factory=list)
    _size: int = 0
    _mark: tuple[int, int, Any] | None = None

    @property
    def offset(self) -> int:
        return self._size

    def add(self, data: bytes) -> None:
        self.chunks.append(data)
        self._size += len(data)
        self.hasher.update(data)

    def blob(self) -> bytes:
        return b"".join(self.chunks)

    def mark(self) -> None:
        """Remember where the current source starts (undone by `rollback`)."""
        self._mark = (len(self.chunks), self._size, self.hasher.copy())

    def rollback(self) -> None:
        """Drop what the current source sent: a faulting peer's bytes are not trusted."""
        if self._mark is None:
            return
        count, start, hasher = self._mark
        if start < self._size:
            del self.chunks[count:]
            self._size = start
            self.hasher = hasher
            self.sources = [s for s in self.sources if s[1] < start]
        self._mark = None

    def reset(self) -> None:
        self.chunks = []
        self._size = 0
        self.hasher = hashlib.sha256()
        self.length = None
        self.sources = []
        self._mark = None


def request(digest: bytes, offset: int = 0) -> bytes:
    return digest + offset.to_bytes(8, "big")


def parse_request(data: bytes) -> tuple[bytes, int]:
    return data[:32], int.from_bytes(data[32:40], "big")


async def serve_guarded(serve: Callable[[Any], Awaitable[None]], stream: Any,
                        what: str) -> None:
    """`serve(stream)` as a py-libp2p stream handler: an exception escaping a handler
    can tear the host down, so every error (cancellation aside) resets the stream."""
    try:
        await serve(stream)
    except trio.Cancelled:
        raise
    except BaseException as exc:
        logging.getLogger("node.mesh.p2p").debug("%s handler: %r", what, exc)
        with contextlib.suppress(BaseException):
            await stream.reset()


async def read_exact(stream, n: int, idle_timeout: float,  # type: ignore[no-untyped-def]
                     progress: Callable[[int], None] | None = None) -> bytes:
    """`n` bytes from `stream`; `progress(bytes so far)` after each read."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        with trio.move_on_after(idle_timeout) as cs:
            try:
                piece = await stream.read(n - got)
            except Exception as exc:  # py-libp2p raises on EOF and on resets
                raise PeerUnavailable(f"stream ended: {type(exc).__name__}") from exc
        if cs.cancelled_caught:
            raise PeerTooSlow(f"no data for {idle_timeout}s")
        if not piece:
            raise PeerUnavailable("stream ended early")
        parts.append(piece)
        got += len(piece)
        if progress is not None:
            progress(got)
    return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)  # joined once (`Partial`)


async def read_response(stream, digest: bytes, expected_size: int | None,  # type: ignore[no-untyped-def]
                        limits: ReadLimits, on_bytes: Callable[[int], None],
                        partial: Partial | None = None, source: str = "") -> bytes:
    """Read one reply into `partial` (a fresh one by default) and return the whole blob.

    On an exception the bytes received so far stay in `partial`, so the caller
    can ask the next source for the rest.
    """
    part = Partial() if partial is None else partial
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
    if part.length is not None and length != part.length:
        raise PeerFault(f"length {length} differs from the earlier source's {part.length}")
    if part.offset > length:
        raise PeerFault(f"offset {part.offset} beyond length {length}")
    part.length = length
    part.mark()
    first = part.offset
    started = time.monotonic()
    try:
        while part.offset < length:
            with trio.move_on_after(limits.idle_timeout) as cs:
                try:
                    piece = await stream.read(min(CHUNK, length - part.offset))
                except Exception as exc:
                    raise PeerUnavailable(f"stream ended after {part.offset}/{length} bytes: "
                                          f"{type(exc).__name__}") from exc
            if cs.cancelled_caught:
                raise PeerTooSlow(f"stalled for {limits.idle_timeout}s at {part.offset}/{length}")
            if not piece:
                raise PeerUnavailable(f"stream ended after {part.offset}/{length} bytes")
            part.add(piece)
            on_bytes(len(piece))
            elapsed = time.monotonic() - started
            got = part.offset - first
            if elapsed > limits.grace and got / elapsed < limits.min_rate:
                raise PeerTooSlow(f"too slow: {got / elapsed:.0f} B/s")
    finally:
        if part.offset > first:
            part.sources.append((source, first, part.offset - first))
    if part.hasher.digest() != digest:
        raise PeerFault("bytes do not hash to the requested SHA-256")
    return part.blob()


def response_header(status: int, length: int = 0) -> bytes:
    return bytes([status]) + length.to_bytes(8, "big")


class TokenBucket:
    """Requests per second per peer, with a small burst."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class ByteBucket(TokenBucket):
    """Bytes per second (one peer's upload budget): `spend` waits until `n` bytes fit."""

    async def spend(self, n: int) -> None:
        self._refill()
        self.tokens -= n  # may go negative: the debt is paid by waiting
        if self.tokens < 0:
            await trio.sleep(-self.tokens / self.rate)

    def piece_size(self) -> int:
        """Write in pieces of about 1/8 s of budget, so the pace stays smooth."""
        return max(16 * 1024, min(CHUNK, int(self.rate / 8)))
