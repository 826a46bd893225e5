"""The blob reply: what counts as an honest refusal and what as a fault, and a transfer
resumed at a second source (`Partial`)."""

from __future__ import annotations

import hashlib

import pytest

trio = pytest.importorskip("trio")

from node.mesh.p2p_blob import (  # noqa: E402
    BUSY,
    NOT_FOUND,
    OK,
    Partial,
    PeerFault,
    PeerTooSlow,
    PeerUnavailable,
    ReadLimits,
    read_exact,
    read_response,
    response_header,
)

LIMITS = ReadLimits(max_blob_bytes=1 << 20, idle_timeout=1.0)


class FakeStream:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, n: int) -> bytes:
        piece, self.data = self.data[:n], self.data[n:]
        return piece


def read(data: bytes, digest: bytes = b"\0" * 32) -> bytes:
    async def main() -> bytes:
        return await read_response(FakeStream(data), digest, None, LIMITS, lambda n: None)

    return trio.run(main)


def test_honest_refusals_are_unavailable_not_faults() -> None:
    for status in (NOT_FOUND, BUSY):
        with pytest.raises(PeerUnavailable):
            read(response_header(status))


def test_a_refusal_with_a_length_or_an_unknown_status_is_a_fault() -> None:
    with pytest.raises(PeerFault):
        read(response_header(NOT_FOUND, 5) + b"x" * 5)
    with pytest.raises(PeerFault):
        read(bytes([0xEE]) + (0).to_bytes(8, "big"))


def test_ok_reply_round_trips_and_a_wrong_body_is_a_fault() -> None:
    blob = b"gradmesh" * 100
    digest = hashlib.sha256(blob).digest()
    assert read(response_header(OK, len(blob)) + blob, digest) == blob
    with pytest.raises(PeerFault):
        read(response_header(OK, len(blob)) + bytes(len(blob)), digest)


def test_a_source_that_sends_nothing_is_too_slow_not_a_liar() -> None:
    """Silence is judged on timing alone: `PeerTooSlow`, which fetchers score lightly and
    never disconnect for (an honest peer on a congested link can be silent too)."""

    class Silent:
        async def read(self, n: int) -> bytes:
            await trio.sleep_forever()
            return b""

    async def main() -> bytes:
        return await read_exact(Silent(), 9, idle_timeout=0.05)

    with pytest.raises(PeerTooSlow, match="no data"):
        trio.run(main)


class Trickle(FakeStream):
    """At most `step` bytes a read, as a socket hands them over."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self.step = step

    async def read(self, n: int) -> bytes:
        return await super().read(min(n, self.step))


def test_a_resumed_transfer_keeps_one_source_and_drops_a_faulting_ones_bytes() -> None:
    """Two sources into one `Partial`: the second resumes at the first's offset, the hash
    spans both; a rollback drops exactly the current source's bytes and hash state."""
    blob = bytes(range(256)) * 40
    digest = hashlib.sha256(blob).digest()
    part = Partial()
    part.mark()
    part.add(blob[:3000])
    part.sources.append(("a", 0, 3000))
    part.mark()
    part.add(b"junk" * 100)  # the next source lies, then is rolled back
    part.sources.append(("liar", 3000, 400))
    part.rollback()
    assert part.offset == 3000
    assert part.sources == [("a", 0, 3000)]

    async def rest() -> bytes:
        rest = response_header(OK, len(blob)) + blob[3000:]
        return await read_response(Trickle(rest, 700), digest, len(blob), LIMITS,
                                   lambda n: None, part, "b")

    assert trio.run(rest) == blob
    assert part.sources == [("a", 0, 3000), ("b", 3000, len(blob) - 3000)]


def test_read_exact_joins_what_arrives_in_pieces() -> None:
    async def main() -> bytes:
        return await read_exact(Trickle(b"0123456789" * 50, 64), 333, idle_timeout=1.0)

    assert trio.run(main) == (b"0123456789" * 50)[:333]
