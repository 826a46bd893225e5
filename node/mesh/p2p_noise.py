"""`BatchedNoiseTransport`: py-libp2p's Noise transport session, with one socket write
per large write and large socket reads cut into messages from a buffer.

Noise caps a transport message at 65,535 bytes, so a yamux frame of a few
hundred KiB leaves py-libp2p 0.8.1 (pinned in pyproject.toml) as several
messages, each written to the socket on its own, and every message is read
back with two more socket calls (its 2-byte length, then its body). For bulk
transfers that per-message cost is most of the CPU a fetch spends
(docs/mesh.md, "Measured"). Here a large write encrypts its messages in order
and hands them to the socket in one call, and reads take up to `READ_SIZE`
bytes at a time and cut messages out of what arrived. The bytes on the wire
are the same messages in the same order: peers on any Noise implementation
see no difference.

The handshake keeps py-libp2p's own reader and writer (it reads exactly what it
needs, so nothing meant for the session is left in it). `install()` points the
name py-libp2p builds its transport sessions by at this class, as
node/mesh/p2p_yamux.py does for yamux. Imported only by `node.mesh.p2p_host`.
"""

from __future__ import annotations

import socket
from typing import Any

import trio
from libp2p.io.exceptions import IncompleteReadError
from libp2p.security.noise import patterns
from libp2p.security.noise.io import (
    MAX_PLAINTEXT_LENGTH,
    SIZE_NOISE_MESSAGE_LEN,
    NoisePacketReadWriter,
    NoiseTransportReadWriter,
)

READ_SIZE = 256 * 1024  # bytes asked of the socket per read
# the most bytes a read waits for before it wakes (SO_RCVLOWAT): a quarter of the
# smallest receive buffer Linux gives a TCP socket (tcp_rmem's default, 128 KiB),
# so the kernel never clamps the connection's window to it
LOWAT_CAP = 32 * 1024


def tcp_socket(conn: Any) -> Any:
    """The trio TCP socket under py-libp2p's raw connection `conn`, or None (a relayed
    connection, or another transport)."""
    sock = getattr(getattr(getattr(conn, "stream", None), "stream", None), "socket", None)
    if isinstance(sock, trio.socket.SocketType) and sock.type == socket.SOCK_STREAM:
        return sock
    return None


class BufferedPacketReader(NoisePacketReadWriter):
    """Length-prefixed Noise packets read from a buffer refilled `READ_SIZE` at a time.

    A message's length is known from its first two bytes, so while a message is
    incomplete the socket is told (SO_RCVLOWAT) to wake the reader only once the rest
    of it, up to `LOWAT_CAP`, has arrived: a 64 KiB message over a shaped link comes
    in ~45 TCP segments, and each would otherwise wake the reader on its own. Only
    bytes the peer has already committed to sending are waited for, so no read waits
    on data that is not coming; a closed or reset connection wakes it as before."""

    def __init__(self, read_write_closer: Any) -> None:
        super().__init__(read_write_closer)
        self._buffer = bytearray()
        self._socket = tcp_socket(read_write_closer)
        self._lowat = 1

    def _wake_at(self, missing: int) -> None:
        lowat = max(1, min(missing, LOWAT_CAP))
        if self._socket is None or lowat == self._lowat:
            return
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            self._lowat = lowat
        except OSError:  # a closed socket: the read says so
            self._socket = None

    async def _fill(self, n: int) -> None:
        while len(self._buffer) < n:
            self._wake_at(n - len(self._buffer))
            data = await self.read_write_closer.read(max(READ_SIZE, n - len(self._buffer)))
            if not data:
                raise IncompleteReadError(
                    f"Connection closed during read operation: expected {n} bytes but "
                    f"received {len(self._buffer)} bytes",
                    expected_bytes=n, received_bytes=len(self._buffer))
            self._buffer += data

    async def read_msg(self) -> bytes:
        await self._fill(SIZE_NOISE_MESSAGE_LEN)
        end = SIZE_NOISE_MESSAGE_LEN + int.from_bytes(self._buffer[:SIZE_NOISE_MESSAGE_LEN],
                                                      "big")
        await self._fill(end)
        with memoryview(self._buffer) as view:  # one copy, not a slice's and then bytes'
            msg = bytes(view[SIZE_NOISE_MESSAGE_LEN:end])
        del self._buffer[:end]
        return msg


class BatchedNoiseTransport(NoiseTransportReadWriter):
    """A Noise transport session that writes a large message's packets in one call and
    reads through a `BufferedPacketReader`."""

    def __init__(self, conn: Any, noise_state: Any) -> None:
        super().__init__(conn, noise_state)
        self.read_writer = BufferedPacketReader(conn)

    async def write_msg(self, msg: bytes, prefix_encoded: bool = False) -> None:
        if prefix_encoded or len(msg) <= MAX_PLAINTEXT_LENGTH:
            await super().write_msg(msg, prefix_encoded)
            return
        out = bytearray()
        view = memoryview(msg)
        for start in range(0, len(msg), MAX_PLAINTEXT_LENGTH):
            packet = self.encrypt(bytes(view[start:start + MAX_PLAINTEXT_LENGTH]))
            out += len(packet).to_bytes(SIZE_NOISE_MESSAGE_LEN, "big")
            out += packet
        # py-libp2p annotates `bytes`; its socket write takes any buffer, so no copy here
        await self.read_writer.read_write_closer.write(out)  # type: ignore[arg-type]


def install() -> None:
    """Every Noise transport session py-libp2p makes from now on is a
    `BatchedNoiseTransport` (idempotent)."""
    patterns.NoiseTransportReadWriter = BatchedNoiseTransport  # type: ignore[attr-defined]
