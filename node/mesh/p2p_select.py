"""A stream opened in one round trip (trio side of the bridge).

py-libp2p's `new_stream` runs multistream-select as a dialogue: it sends the
handshake and waits for the echo, then sends the protocol and waits again, and only
then may the caller write its request: three round trips before a piece's first byte
(docs/mesh.md). `open_pipelined` sends the handshake, the protocol and the caller's
first bytes in one write and then reads the two echoes, as multistream-select allows
a dialer that knows its protocol is supported. The listener is py-libp2p's own
(unchanged): it reads the handshake and the protocol as before and finds the request
already waiting in the stream. A listener that does not speak the protocol answers
"na"; that is a `ProtocolRefused`, and the stream is reset.

This module opens streams; it never reads past the two echoes, and never retries.
"""

from __future__ import annotations

import contextlib
from typing import Any

from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.utils import encode_delim, read_delim

from node.mesh.errors import MeshError
from node.mesh.p2p_yamux import grant

MULTISTREAM = b"/multistream/1.0.0"


class ProtocolRefused(MeshError, ConnectionError):
    """The remote answered the protocol with something else (usually "na")."""


async def open_pipelined(host: Any, peer: ID, protocol: str, first: bytes,
                         credit: int = 0) -> Any:
    """A stream to `peer` speaking `protocol`, with `first` already written to it;
    with `credit`, the stream's receive window is raised to that many bytes before
    (node/mesh/p2p_yamux.py, `grant`), so an answer that size flows without waiting."""
    stream = await host.get_network().new_stream(peer)
    handshake = encode_delim(MULTISTREAM) + encode_delim(protocol.encode())
    try:
        if credit:  # the listener echoes the handshake before it answers
            await grant(stream, len(handshake) + credit)
        await stream.write(handshake + first)
        for expected in (MULTISTREAM, protocol.encode()):
            answer = await read_delim(stream)
            if answer != expected:
                raise ProtocolRefused(f"{peer} answered {answer[:64]!r} to {expected!r}")
    except BaseException:
        with contextlib.suppress(Exception):
            await stream.reset()
        raise
    stream.set_protocol(TProtocol(protocol))
    return stream
