"""The yamux reader keeps reading while the connection cannot be written to.

Both ends of a connection that carries pieces both ways can fill their send
buffers at once; py-libp2p's reader answers PINGs and acknowledges streams by
writing, so it blocked there and neither end read again (the namespace
dissemination stall, docs/mesh.md). `ReaderSafeYamux` queues those frames.
Here the connection's writes never complete (a full send buffer), a PING and a
new stream with data arrive, and the stream's data must still be taken in.
"""

from __future__ import annotations

import struct

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.stream_muxer import muxer_multistream
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable
from libp2p.stream_muxer.yamux.yamux import Yamux

from node.mesh import p2p_yamux
from node.mesh.p2p_yamux import ReaderSafeYamux, install, muxer_options

HEADER = "!BBHII"  # yamux: version, type, flags, stream id, length
DATA, PING = 0, 2
SYN = 1


class StuckConn:
    """A secured connection whose peer stopped reading: every write waits forever."""

    is_initiator = False

    def __init__(self, incoming: bytes) -> None:
        self.incoming = bytearray(incoming)
        self.writes_started = 0
        self.closed = False

    async def read(self, n: int | None = None) -> bytes:
        if not self.incoming:
            await trio.sleep_forever()
        size = len(self.incoming) if n is None or n < 0 else n
        chunk = bytes(self.incoming[:size])
        del self.incoming[:size]
        return chunk

    async def write(self, data: bytes) -> None:
        self.writes_started += 1
        await trio.sleep_forever()

    async def close(self) -> None:
        self.closed = True

    def get_remote_address(self) -> tuple[str, int]:
        return ("127.0.0.1", 1)


def _frames() -> bytes:
    ping = struct.pack(HEADER, 0, PING, SYN, 0, 7)
    opened = struct.pack(HEADER, 0, DATA, SYN, 1, 5) + b"hello"
    return ping + opened


async def _first_stream_data(muxer_class: type[Yamux]) -> tuple[bytes | None, int]:
    conn = StuckConn(_frames())
    muxer = muxer_class(conn, ID(b"\x00\x01"), is_initiator=False)  # type: ignore[arg-type]
    got: bytes | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(muxer.start)
        with trio.move_on_after(3.0):
            await muxer.accept_stream()
            # the reader has taken the data off the connection (reading it from the
            # stream would also send a window update, which waits like every write)
            while len(muxer.stream_buffers.get(1, b"")) < 5:  # stream 1, opened above
                await trio.sleep(0.01)
            got = bytes(muxer.stream_buffers[1])
        nursery.cancel_scope.cancel()
    return got, conn.writes_started


def test_the_reader_reads_on_while_writes_are_stuck() -> None:
    got, writes = trio.run(_first_stream_data, ReaderSafeYamux)
    assert got == b"hello"
    assert writes >= 1  # the PING answer and the stream's ACK were handed to the sender


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_py_libp2p_s_own_reader_stops_at_a_stuck_write() -> None:
    """The cause, kept as a test: when this fails, py-libp2p (pinned) has changed and
    `ReaderSafeYamux` may no longer be needed."""
    got, _ = trio.run(_first_stream_data, Yamux)
    assert got is None


def test_yamux_connections_are_built_reader_safe() -> None:
    options = muxer_options()
    install()
    assert ReaderSafeYamux in options.values()
    assert muxer_multistream.Yamux is ReaderSafeYamux  # type: ignore[attr-defined]


def test_a_write_the_peer_never_takes_closes_the_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that stops reading must not hold the write lock forever: py-libp2p resets
    streams shielded from cancellation, behind that lock."""
    monkeypatch.setattr(p2p_yamux, "WRITE_STALL_S", 0.2)
    conn = StuckConn(b"")
    muxer = ReaderSafeYamux(conn, ID(b"\x00\x01"), is_initiator=False)  # type: ignore[arg-type]

    async def holder() -> None:  # the first write: takes the lock, never completes
        with pytest.raises(MuxedConnUnavailable):
            await muxer._write_frame(b"\0" * 12)

    async def main() -> None:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(holder)
                await trio.sleep(0.05)
                # shielded, as py-libp2p's resets wait
                with pytest.raises(MuxedConnUnavailable), trio.CancelScope(shield=True):
                    await muxer._write_frame(b"\0" * 12)
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert conn.closed
