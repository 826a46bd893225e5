"""Noise sessions that batch socket calls put the same bytes on the wire.

`BatchedNoiseTransport` (node/mesh/p2p_noise.py) writes a large message's Noise
packets in one socket call and reads packets out of large socket reads. Here:
its wire bytes equal py-libp2p's own writer's for the same message; a real
Noise session (noiseprotocol, ChaChaPoly) decrypts what it wrote, read back in
arbitrary splits; a connection closing mid-packet is a typed error; on a real
TCP socket, an incomplete packet wakes the reader only once the rest is there;
and hosts build their sessions with it.
"""

from __future__ import annotations

import os
import random
import socket

import pytest
import trio
from libp2p.io.exceptions import IncompleteReadError
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.security.noise import patterns
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from noise.connection import NoiseConnection

from node.mesh.p2p_noise import (
    LOWAT_CAP,
    BatchedNoiseTransport,
    BufferedPacketReader,
    install,
)


class Wire:
    """A raw connection: records each write; reads hand out `incoming` in given sizes."""

    def __init__(self, incoming: bytes = b"", splits: list[int] | None = None) -> None:
        self.writes: list[bytes] = []
        self.incoming = bytearray(incoming)
        self.splits = list(splits or [])

    async def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    async def read(self, n: int | None = None) -> bytes:
        size = min(n or len(self.incoming), self.splits.pop(0) if self.splits else 1 << 30)
        chunk = bytes(self.incoming[:size])
        del self.incoming[:size]
        return chunk

    async def close(self) -> None:
        pass


class CountingState:
    """A stand-in Noise state: each packet is a counter, the plaintext and a 8-byte tag
    (16 bytes of overhead, as ChaChaPoly's), so order and boundaries show."""

    def __init__(self) -> None:
        self.n = 0

    def encrypt(self, data: bytes) -> bytes:
        self.n += 1
        return self.n.to_bytes(8, "big") + data + b"\xee" * 8


def noise_pair() -> tuple[NoiseConnection, NoiseConnection]:
    """Two real Noise sessions after an NN handshake."""
    a = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    b = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    a.set_as_initiator()
    b.set_as_responder()
    a.start_handshake()
    b.start_handshake()
    b.read_message(a.write_message())
    a.read_message(b.write_message())
    assert a.handshake_finished
    assert b.handshake_finished
    return a, b


@pytest.mark.parametrize("size", [10, MAX_PLAINTEXT_LENGTH, MAX_PLAINTEXT_LENGTH + 1,
                                  5 * MAX_PLAINTEXT_LENGTH + 123])
def test_the_wire_bytes_equal_py_libp2p_s_own_writer(size: int) -> None:
    msg = os.urandom(size)
    stock_wire, batched_wire = Wire(), Wire()
    stock = NoiseTransportReadWriter(stock_wire, CountingState())  # type: ignore[arg-type]
    batched = BatchedNoiseTransport(batched_wire, CountingState())
    trio.run(stock.write_msg, msg)
    trio.run(batched.write_msg, msg)
    assert b"".join(batched_wire.writes) == b"".join(stock_wire.writes)
    assert len(batched_wire.writes) == 1  # one socket call, however many packets
    assert len(stock_wire.writes) == -(-size // MAX_PLAINTEXT_LENGTH)


def test_a_real_noise_session_reads_back_what_was_written_in_any_split() -> None:
    a, b = noise_pair()
    messages = [os.urandom(n) for n in (3, 200_000, MAX_PLAINTEXT_LENGTH, 70_000, 1)]
    out = Wire()
    writer = BatchedNoiseTransport(out, a)
    for m in messages:
        trio.run(writer.write_msg, m)
    wire = b"".join(out.writes)
    rng = random.Random(7)
    splits = [rng.choice([1, 2, 3, 1000, 65_537, 300_000]) for _ in range(len(wire))]
    reader = BatchedNoiseTransport(Wire(wire, splits), b)

    async def read_all() -> bytes:
        got = bytearray()
        while len(got) < sum(map(len, messages)):
            got += await reader.read_msg()
        return bytes(got)

    assert trio.run(read_all) == b"".join(messages)


def test_a_connection_closing_mid_packet_is_a_typed_error() -> None:
    wire = (100).to_bytes(2, "big") + b"x" * 40  # a 100-byte packet cut at 40
    reader = BufferedPacketReader(Wire(wire))
    with pytest.raises(IncompleteReadError):
        trio.run(reader.read_msg)


def packet(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


def test_an_incomplete_packet_wakes_the_reader_once_the_rest_is_there() -> None:
    # on 127.0.0.1: SO_RCVLOWAT is the rest of the packet (at most LOWAT_CAP) while
    # the reader waits, and back down to what the next packet needs after it
    big, small, last = os.urandom(50_000), b"hello", b"after the big one"

    async def main() -> list[bytes]:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        client = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
        server = await listener.accept()
        reader = BufferedPacketReader(RawConnection(TrioTCPStream(server), initiator=False))

        def lowat() -> int:
            return int(server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT))

        got: list[bytes] = []
        wire = packet(big) + packet(small)
        await client.send_all(wire[:1000])
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                async def read_two() -> None:
                    got.extend([await reader.read_msg(), await reader.read_msg()])

                nursery.start_soon(read_two)
                rest = min(len(big) + 2 - 1000, LOWAT_CAP)
                assert rest >= 16 * 1024  # a wake-up per ~16 KiB or more, not per segment
                while lowat() != rest:
                    await trio.sleep(0.01)  # the reader parks on the socket
                await client.send_all(wire[1000:])
            await client.send_all(packet(last)[:1])  # one byte: less than any packet
            async with trio.open_nursery() as nursery:
                async def read_last() -> None:
                    got.append(await reader.read_msg())

                nursery.start_soon(read_last)
                while lowat() > 2:  # the rest of the next packet's length, not 32 KiB
                    await trio.sleep(0.01)
                await client.send_all(packet(last)[1:])
        for s in (client, server, listener):
            await s.aclose()
        return got

    assert trio.run(main) == [big, small, last]


def test_noise_sessions_are_built_batched() -> None:
    install()
    assert patterns.NoiseTransportReadWriter is BatchedNoiseTransport  # type: ignore[attr-defined]
