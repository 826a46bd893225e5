"""A user-space WAN delay line for the namespace lab (this kernel has no `netem`).

Owns three things:

* the schedule: `release_time` / `schedule` decide, for each frame, when it
  leaves the line (arrival + delay ± jitter) or that it is lost; a pure function
  of the arrival times, the `LineSpec` and a seeded stream, unit-tested;
* the forwarder (`python delay_line.py serve`): one process inside the lab's
  delay namespace that carries Ethernet frames between the two veth ends of
  every delayed link (AF_PACKET sockets, one per end, all in one `select` loop),
  holding each frame in a heap until its release time. It is a transparent
  wire: the hosts on either side keep their addresses, ARP and bridging work
  unchanged. Frames keep the kernel's offload metadata (`PACKET_VNET_HDR`), so
  a TCP burst crosses as one GSO frame of up to 64 KiB; that is what lets a
  Python process keep up with several 100 Mbit/s links. Order is kept when
  jitter is 0. Commands arrive as JSON lines on stdin (`add`, `set`, `stats`),
  each is answered by one `reply` JSON line on stdout; EOF on stdin stops it;
* an ICMP echo probe (`python delay_line.py ping ADDR`), run inside a
  namespace, that measures the round trip a link really has (no `ping` binary
  needed).

`tests.support.netns.Lab` drives all of it (`Lab.link(..., line=LineSpec(...))`).
Network safety: the forwarder only ever opens packet sockets on the interfaces
it is told to, inside the namespace it runs in; it has no addresses.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15  # frames carry a struct virtio_net_hdr (10 bytes) in front
PACKET_IGNORE_OUTGOING = 23
RECV_BUF = 256 * 1024  # a GSO frame is at most 64 KiB + headers
SOCK_BUF = 8 * 1024 * 1024
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # asm-generic/socket.h; `socket` lacks them
SMALL_FRAME = 128  # vnet header, Ethernet, IPv4 and TCP with options: a bare ACK is 76
BATCH = 64  # frames read from one socket before looking at the clock again


@dataclass(frozen=True)
class LineSpec:
    """One direction's behaviour (a link applies it to both directions).

    `delay_ms` one-way; `jitter_ms` uniform in ±jitter (a frame never leaves before
    it arrived); `loss` probability that a frame is dropped; `seed` for both.
    `per_packet`: the hosts on the link send MTU-sized frames instead of TCP's GSO
    bursts of up to 64 KiB (always so with loss, so that loss hits packets); costs
    the forwarder ~15x more frames per byte (see docs/mesh.md).
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    seed: int = 0
    per_packet: bool = False

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be in [0, 1)")

    @classmethod
    def of(cls, fields: dict[str, Any]) -> LineSpec:
        return cls(**{k: fields[k] for k in ("delay_ms", "jitter_ms", "loss", "seed",
                                             "per_packet") if k in fields})


def stream_rng(spec: LineSpec, stream: str) -> random.Random:
    """The random stream of one direction of one link (deterministic: str seeds
    are hashed with SHA-512, not with Python's per-process hash)."""
    return random.Random(f"{spec.seed}/{stream}")


def release_time(arrival: float, spec: LineSpec, rng: random.Random) -> float | None:
    """When a frame that arrived at `arrival` (seconds) leaves, or None if lost.
    Draws the loss variate first, then (only with jitter) the jitter variate."""
    if spec.loss and rng.random() < spec.loss:
        return None
    offset = spec.delay_ms / 1e3
    if spec.jitter_ms:
        offset += rng.uniform(-spec.jitter_ms, spec.jitter_ms) / 1e3
    return arrival + max(0.0, offset)


def schedule(arrivals: Sequence[float], spec: LineSpec, stream: str) -> list[float | None]:
    """Release times for a sequence of arrivals on one stream (None = lost): exactly
    what the forwarder does for frames arriving at those times."""
    rng = stream_rng(spec, stream)
    return [release_time(t, spec, rng) for t in arrivals]


# ---- the forwarder ---------------------------------------------------------------------
def open_end(dev: str) -> socket.socket:
    """A non-blocking packet socket on `dev` that sees only frames arriving there."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):  # root: past rmem_max
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
        sock.bind((dev, ETH_P_ALL))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Direction:
    """Frames read on `src`, written on `dst` after the line's delay."""

    name: str
    src: socket.socket
    dst: socket.socket
    spec: LineSpec
    rng: random.Random
    frames: int = 0
    bytes: int = 0
    small: int = 0  # frames of at most SMALL_FRAME bytes: ACKs and control, no payload
    lost: int = 0
    send_errors: int = 0
    truncated: int = 0

    def counters(self) -> dict[str, int]:
        return {"frames": self.frames, "bytes": self.bytes, "small": self.small,
                "lost": self.lost,
                "send_errors": self.send_errors, "truncated": self.truncated}


@dataclass
class Forwarder:
    """All delayed links of one lab, in one single-threaded loop."""

    by_fd: dict[int, Direction] = field(default_factory=dict)
    links: dict[str, tuple[Direction, Direction]] = field(default_factory=dict)
    heap: list[tuple[float, int, Direction, bytes]] = field(default_factory=list)
    seq: int = 0
    buf: bytearray = field(default_factory=lambda: bytearray(RECV_BUF))

    def add(self, name: str, dev_a: str, dev_b: str, spec: LineSpec) -> None:
        a = open_end(dev_a)
        try:
            b = open_end(dev_b)
        except OSError:
            a.close()
            raise
        ab = Direction(f"{name}:ab", a, b, spec, stream_rng(spec, f"{name}:ab"))
        ba = Direction(f"{name}:ba", b, a, spec, stream_rng(spec, f"{name}:ba"))
        self.by_fd[a.fileno()], self.by_fd[b.fileno()] = ab, ba
        self.links[name] = (ab, ba)

    def set(self, name: str, spec: LineSpec) -> None:
        for d in self.links[name]:
            d.spec, d.rng = spec, stream_rng(spec, d.name)

    def stats(self) -> dict[str, Any]:
        return {"links": {n: {"ab": ab.counters(), "ba": ba.counters(),
                              "spec": asdict(ab.spec)}
                          for n, (ab, ba) in self.links.items()},
                "held": len(self.heap), "cpu_s": round(time.process_time(), 3)}

    def receive(self, d: Direction) -> None:
        """Read what is waiting on one end (up to BATCH frames) into the heap."""
        view = memoryview(self.buf)
        for _ in range(BATCH):
            try:
                n = d.src.recv_into(self.buf, RECV_BUF, socket.MSG_TRUNC)
            except BlockingIOError:
                return
            if n > RECV_BUF:
                d.truncated += 1
                continue
            d.frames += 1
            d.bytes += n
            d.small += n <= SMALL_FRAME
            due = release_time(time.monotonic(), d.spec, d.rng)
            if due is None:
                d.lost += 1
                continue
            self.seq += 1
            heapq.heappush(self.heap, (due, self.seq, d, bytes(view[:n])))

    def release(self) -> float | None:
        """Send every frame that is due; returns seconds until the next one."""
        now = time.monotonic()
        while self.heap and self.heap[0][0] <= now:
            _, _, d, frame = heapq.heappop(self.heap)
            try:
                d.dst.send(frame)
            except OSError:  # the far end's backlog is full (ENOBUFS) or it went away
                d.send_errors += 1
        return max(0.0, self.heap[0][0] - now) if self.heap else None


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def command(fwd: Forwarder, line: str) -> None:
    """One JSON command from stdin, answered by one `reply` event (`ok` false with an
    `error` when it failed)."""
    try:
        msg = json.loads(line)
        cmd = msg.get("cmd")
        if cmd == "add":
            fwd.add(msg["name"], msg["a"], msg["b"], LineSpec.of(msg["spec"]))
            emit("reply", ok=True)
        elif cmd == "set":
            fwd.set(msg["name"], LineSpec.of(msg["spec"]))
            emit("reply", ok=True)
        elif cmd == "stats":
            emit("reply", ok=True, **fwd.stats())
        else:
            emit("reply", ok=False, error=f"unknown command {cmd!r}")
    except (ValueError, KeyError, TypeError, OSError) as e:
        emit("reply", ok=False, error=f"{type(e).__name__}: {e}")


def serve() -> None:
    """The forwarder's loop: stdin commands, frames in, frames out when due."""
    fwd = Forwarder()
    stdin = sys.stdin.fileno()
    pending = b""
    emit("ready", pid=os.getpid())
    while True:
        wait = fwd.release()
        readable, _, _ = select.select([stdin, *fwd.by_fd], [], [], wait)
        for fd in readable:
            if fd != stdin:
                fwd.receive(fwd.by_fd[fd])
                continue
            chunk = os.read(stdin, 65536)
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                command(fwd, line.decode())


# ---- the probe -------------------------------------------------------------------------
ICMP_ECHO, ICMP_ECHO_REPLY = 8, 0


def icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, icmp_checksum(head + payload), ident,
                       seq) + payload


def parse_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number of an echo reply to us in a raw IPv4 packet, else None."""
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return None
    kind, _, _, rid, seq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
    return int(seq) if kind == ICMP_ECHO_REPLY and rid == ident else None


def summarize(rtts: Iterable[float], sent: int) -> dict[str, Any]:
    ms = sorted(r * 1e3 for r in rtts)
    out: dict[str, Any] = {"sent": sent, "received": len(ms),
                           "loss": round(1 - len(ms) / sent, 4) if sent else 0.0}
    if ms:
        out |= {"min_ms": round(ms[0], 3), "avg_ms": round(sum(ms) / len(ms), 3),
                "median_ms": round(ms[len(ms) // 2], 3), "max_ms": round(ms[-1], 3)}
    return out


def ping(addr: str, count: int, interval: float, timeout: float) -> dict[str, Any]:
    """`count` ICMP echoes to `addr`, one every `interval` s (not waiting for the
    replies), then up to `timeout` s for the stragglers. One warm-up echo first
    (it also resolves ARP) is not counted."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    payload = b"gradmesh-delay-line".ljust(56, b".")
    with contextlib.closing(sock):
        sock.sendto(echo_request(ident, 0, payload), (addr, 0))
        collect(sock, ident, {0: time.monotonic()}, {}, time.monotonic() + timeout, True)
        sent: dict[int, float] = {}
        rtts: dict[int, float] = {}
        for seq in range(1, count + 1):
            sent[seq] = time.monotonic()
            sock.sendto(echo_request(ident, seq, payload), (addr, 0))
            collect(sock, ident, sent, rtts, sent[seq] + interval, False)
        collect(sock, ident, sent, rtts, time.monotonic() + timeout, True)
    return summarize(rtts.values(), count)


def collect(sock: socket.socket, ident: int, sent: dict[int, float],
            rtts: dict[int, float], until: float, stop_when_answered: bool) -> None:
    """Record echo replies until `until` (or, if asked, once every echo is answered)."""
    while not (stop_when_answered and len(rtts) >= len(sent)):
        left = until - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return
        packet, _ = sock.recvfrom(2048)
        now = time.monotonic()
        seq = parse_reply(packet, ident)
        if seq is not None and seq in sent and seq not in rtts:
            rtts[seq] = now - sent[seq]


def main(argv: Sequence[str]) -> None:
    if argv[:1] == ["serve"]:
        serve()
    elif argv[:1] == ["ping"] and len(argv) >= 2:
        count = int(argv[2]) if len(argv) > 2 else 10
        interval = float(argv[3]) if len(argv) > 3 else 0.02
        print(json.dumps(ping(argv[1], count, interval, timeout=2.0)), flush=True)
    else:
        sys.exit("usage: delay_line.py serve | ping ADDR [COUNT] [INTERVAL_S]")


if __name__ == "__main__":
    main(sys.argv[1:])
