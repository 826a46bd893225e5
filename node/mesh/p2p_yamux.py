"""`ReaderSafeYamux`: py-libp2p's yamux muxer whose reader never waits on a write,
and whose writes never wait forever.

py-libp2p 0.8.1 (pinned in pyproject.toml) answers a PING and acknowledges a new
stream from inside the connection's reader, by writing to the connection there.
When both ends of one connection send faster than their link drains (pieces flow
both ways while swarming), both send buffers fill; each reader then blocks in
that write, stops reading, and so never drains the other end: a deadlock, seen
as one connection whose sockets both hold a full Recv-Q and Send-Q (`ss -tn`),
and fetches that never finish (docs/mesh.md, "The dissemination stall").

Here the frames the reader writes go, in order, to one sender task per
connection, so the reader keeps reading whatever the network does.

A peer that stops reading (dead, wedged, or hostile) otherwise holds a
connection's write lock forever: every later write on that connection waits,
including py-libp2p's stream resets, which it runs shielded from cancellation,
so a fetch that gives up cannot even finish leaving. A frame the peer has not
taken in `WRITE_STALL_S` therefore closes the connection; the waiting writes
then fail at once.

py-libp2p cuts a stream's writes into data frames of 64 KiB, header included,
and Noise carries at most 65,519 plaintext bytes per message, so every frame
left as two Noise messages, the second of 17 bytes: two encryptions, two
decryptions and two reads where one would do. `install()` sets the frame to
`FRAME_BYTES`, two whole Noise messages, which also halves the frames per byte;
on the two-process loopback benchmark that took a fetch from ~285 to ~335 MiB/s
(docs/mesh.md, "Frames of whole Noise messages"). Yamux sets no frame size:
the receive window bounds a frame, and a sender never writes past it, so peers
on any yamux read these frames.

py-libp2p 0.8.1 also returns a stream's receive credit (a WINDOW_UPDATE frame: an
encryption and a socket write) after nearly every read smaller than half the
window, down to the one-byte reads of a protocol negotiation's varints: on
loopback a HAVE request cost ~6 CPU ms at both ends, some 40% of it in those
frames. A `QuietStartStream` keeps the credit of its first `QUIET_BYTES` read
(a request, a negotiation, a bitfield: most streams end within them) and
returns it with the first update after them; from then on it returns credit as
py-libp2p does. What it keeps is a sixteenth of the 256 KiB window, so no
sender ever waits for it. Holding back all credit below half the window, as
go-yamux does, made bulk transfers stall: a py-libp2p sender whose window runs
out polls for credit every 10 ms (docs/mesh.md, "Credit").

A stream's sender may not run more than its window (256 KiB at first) ahead of
what the receiver has read, so one stream carries at most a window per round
trip: at 40 ms, ~50 Mbit/s, whatever the link. py-libp2p grows a stream's window
only after several round trips, later than a piece's lifetime. `grant()` lets the
receiver of a known answer credit all of it at once (a 1 MiB piece: one
WINDOW_UPDATE frame as the request leaves), so the answer runs at what TCP gives
(docs/mesh.md, "Credit").

Everything else is py-libp2p's own. py-libp2p builds its yamux connections by the
name `Yamux` in `libp2p.stream_muxer.muxer_multistream` (the class given in the
muxer options is not used for yamux), so `install()` points that name here.
Imported by `node.mesh.p2p_host`, and by `node.mesh.p2p_select` for `grant()`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import trio
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.stream_muxer import muxer_multistream
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.stream_muxer.yamux.yamux import MAX_WINDOW_SIZE, Yamux, YamuxStream

log = logging.getLogger("node.mesh.p2p")

WRITE_STALL_S = 30.0  # a frame not taken in this long: the peer is not reading
FRAME_BYTES = 2 * MAX_PLAINTEXT_LENGTH  # a data frame, its header included
QUIET_BYTES = 16 * 1024  # a stream's first bytes read return no credit of their own


class ReaderSafeYamux(Yamux):
    """Yamux with the reader's own frames (PING answers, stream ACK/RST) queued."""

    _reader: Any = None
    _queue: trio.MemorySendChannel[bytes] | None = None

    async def handle_incoming(self) -> None:
        self._reader = trio.lowlevel.current_task()
        await super().handle_incoming()

    async def _write_frame(self, data: bytes) -> None:
        if trio.lowlevel.current_task() is not self._reader or self._nursery is None:
            await self._write_bounded(data)
            return
        if self._queue is None:
            self._queue, pending = trio.open_memory_channel[bytes](math.inf)
            self._nursery.start_soon(self._send_queued, pending)
        # a closing connection refuses it: the reader finds out on its next read
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._queue.send_nowait(data)
        await trio.lowlevel.checkpoint()

    async def _send_queued(self, pending: trio.MemoryReceiveChannel[bytes]) -> None:
        async with pending:
            async for data in pending:
                try:
                    await self._write_bounded(data)
                except Exception:  # a dead connection: the reader ends it
                    return

    async def _write_bounded(self, data: bytes) -> None:
        """py-libp2p's write (lock, then socket), given up after `WRITE_STALL_S`: the
        connection is closed, and this write and every one waiting behind it fail."""
        with trio.move_on_after(WRITE_STALL_S) as scope:
            await super()._write_frame(data)
        if scope.cancelled_caught:
            log.info("closing the connection to %s: a frame not taken in %.0f s",
                     self.peer_id, WRITE_STALL_S)
            with contextlib.suppress(Exception), trio.move_on_after(2):
                await self.secured_conn.close()
            raise MuxedConnUnavailable("the peer stopped reading: connection closed")


class QuietStartStream(YamuxStream):
    """A yamux stream whose first `QUIET_BYTES` read send no window update."""

    _read_total = 0

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        self._read_total += bytes_read
        if bytes_read > 0 and self._read_total <= QUIET_BYTES:
            async with self.window_lock:  # owed: returned with the next update
                self._pending_recv_release += bytes_read
            return
        await super()._auto_tune_and_send_window_update(bytes_read=bytes_read)


async def grant(stream: Any, nbytes: int) -> None:
    """Credit the sender on `stream` (a py-libp2p stream) with a receive window of
    `nbytes` (at most yamux's 16 MiB) at once; nothing for streams not on yamux, or
    whose window is already that large. The caller must be ready to hold `nbytes`."""
    muxed = getattr(stream, "muxed_stream", None)
    if not isinstance(muxed, YamuxStream):
        return
    want = min(nbytes, MAX_WINDOW_SIZE)
    async with muxed.window_lock:
        delta = want - muxed.recv_window
        if delta <= 0:
            return
        muxed.recv_window += delta
        muxed.target_recv_window = max(muxed.target_recv_window, want)
    await muxed.send_window_update(delta)


def install() -> None:
    """Every yamux connection py-libp2p makes from now on is a `ReaderSafeYamux`
    whose streams are `QuietStartStream`s, and every data frame it writes fills
    whole Noise messages (idempotent)."""
    muxer_multistream.Yamux = ReaderSafeYamux  # type: ignore[attr-defined]
    yamux_module.MAX_MESSAGE_SIZE = FRAME_BYTES  # read by py-libp2p's stream writes
    yamux_module.YamuxStream = QuietStartStream  # type: ignore[misc]  # what it builds


def muxer_options() -> dict[Any, Any]:
    """py-libp2p's muxer options with yamux replaced by `ReaderSafeYamux`, installed."""
    from libp2p import create_yamux_muxer_option

    install()
    return {proto: ReaderSafeYamux if muxer is Yamux else muxer
            for proto, muxer in create_yamux_muxer_option().items()}
