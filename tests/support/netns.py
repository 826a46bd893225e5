"""Network namespaces for mesh tests and benchmarks: made here, always removed here.

Network safety (DESIGN.md): every non-loopback address lives inside namespaces
this module creates; nothing in the root namespace gets an address, a route or
a firewall rule. `Lab` records each namespace it makes and `close()` deletes
them all (which also removes their veth ends, bridges and iptables state),
bounded in time, even after a failure half-way through setup.

Needs root, iproute2 and, for NAT, iptables (Debian packages `iproute2`,
`iptables`); `tc` shaping needs a kernel with `tbf`/`htb`. Latency, jitter and
loss come from the user-space delay line (`tests/support/delay_line.py`, used as
`Lab.link(..., line=LineSpec(...))`), since this kernel has no `netem`.
`available()` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.support.delay_line import LineSpec

ROOT = Path(__file__).resolve().parents[2]
NODE_SCRIPT = Path(__file__).with_name("mesh_node.py")
LINE_SCRIPT = Path(__file__).with_name("delay_line.py")
SMALL_PACKET = 128  # IP bytes (a power of two); a bare ACK with timestamps is 52


class NetnsError(RuntimeError):
    pass


def cpu_mask(n: int) -> str:
    """CPUs 0..n-1 as the kernel reads a cpumask: 32-bit hex groups, comma-separated
    (a single group longer than 8 digits is refused)."""
    full = (1 << n) - 1
    groups = [(full >> shift) & 0xFFFFFFFF for shift in range(0, n, 32)]
    return ",".join(f"{g:x}" if i == 0 else f"{g:08x}" for i, g in enumerate(reversed(groups)))


def _run(args: Sequence[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          check=False)


def available(need_iptables: bool = False) -> str | None:
    """None when namespaces can be made here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if need_iptables and shutil.which("iptables") is None:
        return "iptables is not installed"
    probe = f"gmprobe{uuid.uuid4().hex[:6]}"
    made = _run(["ip", "netns", "add", probe])
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        if need_iptables:
            r = _run(["ip", "netns", "exec", probe, "iptables", "-t", "nat", "-L", "-n"])
            if r.returncode != 0:
                return f"iptables NAT does not work here: {r.stderr.strip()}"
    finally:
        _run(["ip", "netns", "del", probe])
    return None


def qdisc_available(kind: str) -> bool:
    probe = f"gmq{uuid.uuid4().hex[:6]}"
    if _run(["ip", "netns", "add", probe]).returncode != 0:
        return False
    try:
        args = {"netem": ["delay", "1ms"], "tbf": ["rate", "1mbit", "burst", "32k",
                                                  "latency", "50ms"]}.get(kind, [])
        r = _run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root",
                  kind, *args])
        return r.returncode == 0
    finally:
        _run(["ip", "netns", "del", probe])


class Lab:
    """A set of namespaces with a unique prefix; use as a context manager."""

    def __init__(self) -> None:
        self.tag = f"gm{uuid.uuid4().hex[:6]}"
        self.namespaces: list[str] = []
        self._links = 0
        self.procs: list[subprocess.Popen[str]] = []
        self._stderr: dict[int, Any] = {}
        self._line: subprocess.Popen[str] | None = None  # the delay-line forwarder
        self._line_ns = ""
        self._line_ends: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {}
        self.unsteered: list[str] = []  # delayed links' ends without receive steering

    # ---- building -----------------------------------------------------------------
    def ns(self, name: str) -> str:
        full = f"{self.tag}{name}"
        r = _run(["ip", "netns", "add", full])
        if r.returncode != 0:
            raise NetnsError(f"ip netns add {full}: {r.stderr.strip()}")
        self.namespaces.append(full)
        self.sh(full, "ip link set lo up")
        return full

    def sh(self, ns: str, command: str, timeout: float = 10.0) -> str:
        r = _run(["ip", "netns", "exec", ns, "sh", "-c", command], timeout)
        if r.returncode != 0:
            raise NetnsError(f"[{ns}] {command}: {r.stderr.strip() or r.stdout.strip()}")
        return r.stdout

    def link(self, ns_a: str, addr_a: str | None, ns_b: str, addr_b: str | None,
             line: LineSpec | None = None) -> tuple[str, str]:
        """A veth link between two namespaces; addresses in CIDR form (or None).
        With `line`, the link runs through the lab's delay namespace, where the
        delay-line forwarder applies `line` to each direction (see `delay_line.py`);
        the two ends still behave as one Ethernet segment. Returns the two ends."""
        self._links += 1
        n = self._links
        dev_a, dev_b = f"{self.tag}x{n}", f"{self.tag}y{n}"
        if line is None:
            self._veth(ns_a, dev_a, ns_b, dev_b)
        else:
            mid = self._delay_ns()
            self._veth(ns_a, dev_a, mid, f"{self.tag}p{n}")
            self._veth(mid, f"{self.tag}q{n}", ns_b, dev_b)
        for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
            if addr:
                self.sh(ns, f"ip addr add {addr} dev {dev}")
            self.sh(ns, f"ip link set {dev} up")
        if line is not None:
            self._line_ends[dev_a] = ((ns_a, dev_a), (ns_b, dev_b))
            self._steer(ns_a, dev_a)
            self._steer(ns_b, dev_b)
            self._segment(dev_a, line)
            self._line_command({"cmd": "add", "name": dev_a, "a": f"{self.tag}p{n}",
                                "b": f"{self.tag}q{n}", "spec": asdict(line)})
        return dev_a, dev_b

    def _veth(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
        r = _run(["ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name",
                  dev_b, "netns", ns_b])
        if r.returncode != 0:
            raise NetnsError(f"veth {dev_a}/{dev_b}: {r.stderr.strip()}")
        for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
            if ns == self._line_ns:  # the forwarder's ends: no addresses, see every frame
                self.sh(ns, f"ip link set {dev} promisc on up")

    # ---- the delay line -------------------------------------------------------------
    def set_line(self, link: str, line: LineSpec) -> None:
        """Change a delayed link's settings (`link` is the first end `link` returned)."""
        if link not in self._line_ends:
            raise NetnsError(f"{link} is not a delayed link of this lab")
        self._segment(link, line)
        self._line_command({"cmd": "set", "name": link, "spec": asdict(line)})

    def line_stats(self) -> dict[str, Any]:
        """The forwarder's counters per link and direction, frames held, its CPU time."""
        return self._line_command({"cmd": "stats"})

    def _delay_ns(self) -> str:
        """The namespace that holds the forwarder (made, and started, on first use)."""
        if self._line is None:
            self._line_ns = self.ns("dl")
            self.sh(self._line_ns, "sysctl -qw net.ipv6.conf.default.disable_ipv6=1 "
                                   "net.ipv6.conf.all.disable_ipv6=1")
            self._line = self.popen(self._line_ns, [str(LINE_SCRIPT), "serve"])
            read_event(self._line, "ready", 30)
        return self._line_ns

    def _line_command(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send the forwarder one command; its reply, or NetnsError with its error."""
        if self._line is None or self._line.stdin is None:
            raise NetnsError("no delayed link in this lab")
        self._line.stdin.write(json.dumps(msg) + "\n")
        self._line.stdin.flush()
        reply: dict[str, Any] = dict(read_event(self._line, "reply", 30))
        if not reply.get("ok"):
            raise NetnsError(f"delay line {msg.get('cmd')}: {reply.get('error')}")
        return reply

    def _steer(self, ns: str, dev: str) -> None:
        """Frames the forwarder sends arrive on `dev`; without receive packet steering
        the kernel's whole receive path (bridge, shaping, the hosts' TCP, the segments
        an ACK releases) runs in the forwarder's own context, on its one core. With
        it, that work goes to the backlog of any core (docs/mesh.md, "WAN delay line").
        A kernel without RPS (no `rps_cpus`, or a read-only /sys) leaves the link
        unsteered: it still works, with its receive work on the forwarder's core; the
        end is listed in `unsteered` and a warning says so."""
        try:
            self.sh(ns, f"echo {cpu_mask(os.cpu_count() or 1)} > "
                        f"/sys/class/net/{dev}/queues/rx-0/rps_cpus")
        except NetnsError as exc:
            self.unsteered.append(dev)
            warnings.warn(f"{dev}: no receive packet steering, the delay line's receive "
                          f"work stays on its core ({exc})", RuntimeWarning, stacklevel=2)

    def _segment(self, link: str, line: LineSpec) -> None:
        """With loss (or `per_packet`), the hosts send MTU-sized frames (`gso_max_segs
        1`) so that the line drops packets, not 64 KiB TCP bursts; otherwise they send
        GSO frames, which keeps the forwarder's work per byte low."""
        segs = 1 if line.loss > 0 or line.per_packet else 65535
        for ns, dev in self._line_ends[link]:
            self.sh(ns, f"ip link set dev {dev} gso_max_segs {segs}")

    def ping(self, ns: str, addr: str, count: int = 10, interval: float = 0.02
             ) -> dict[str, Any]:
        """Round trip from `ns` to `addr`: ICMP echoes (delay_line.py's probe)."""
        r = _run(["ip", "netns", "exec", ns, sys.executable, str(LINE_SCRIPT), "ping", addr,
                  str(count), str(interval)], timeout=30 + count * interval)
        if r.returncode != 0:
            raise NetnsError(f"[{ns}] ping {addr}: {r.stderr.strip()}")
        return dict(json.loads(r.stdout))

    def bridge(self, ns: str, addr: str | None = None) -> str:
        dev = f"{self.tag}br"
        self.sh(ns, f"ip link add {dev} type bridge && ip link set {dev} up")
        if addr:
            self.sh(ns, f"ip addr add {addr} dev {dev}")
        return dev

    def nat(self, ns: str, public_dev: str) -> None:
        """Masquerade out of `public_dev`; drop anything inbound not part of a flow
        started inside (conntrack ESTABLISHED,RELATED only)."""
        self.sh(ns, "echo 1 > /proc/sys/net/ipv4/ip_forward")
        self.sh(ns, f"iptables -t nat -A POSTROUTING -o {public_dev} -j MASQUERADE")
        for chain in ("FORWARD", "INPUT"):
            self.sh(ns, f"iptables -A {chain} -i {public_dev} -m conntrack "
                        f"--ctstate ESTABLISHED,RELATED -j ACCEPT")
            self.sh(ns, f"iptables -A {chain} -i {public_dev} -j DROP")

    def shape(self, ns: str, dev: str, mbit: float, delay_ms: float = 0.0,
              acks_first: bool = False) -> str:
        """Egress shaping on `dev`: tbf rate, plus netem delay where the kernel has it;
        with `acks_first`, small packets pass the queue (`_shape_acks_first`).
        Without netem a delay is refused rather than silently left out: give the link
        a delay line instead (`link(..., line=LineSpec(delay_ms=...))`). Returns what
        was applied."""
        rate = f"{mbit}mbit"
        if delay_ms:
            if not qdisc_available("netem"):
                raise NetnsError("no netem in this kernel: delay the link with "
                                 "Lab.link(..., line=LineSpec(delay_ms=...))")
            self.sh(ns, f"tc qdisc add dev {dev} root netem delay {delay_ms}ms rate {rate} "
                        f"limit 10000")
            return f"netem rate {rate} delay {delay_ms}ms"
        burst = max(32 * 1024, int(mbit * 1e6 / 8 / 100))  # ~10 ms of traffic
        if acks_first:
            return self._shape_acks_first(ns, dev, rate, burst, mbit)
        self.sh(ns, f"tc qdisc add dev {dev} root tbf rate {rate} burst {burst} latency 100ms")
        return f"tbf rate {rate}"

    def _shape_acks_first(self, ns: str, dev: str, rate: str, burst: int, mbit: float
                          ) -> str:
        """The same rate and 100 ms of queue, but packets of at most `SMALL_PACKET` bytes
        (bare ACKs) leave ahead of the queued data: an htb class with priority
        that a u32 filter on the IP length fills, as a fair queue serves a
        sparse flow."""
        queue = int(mbit * 1e6 / 8 * 0.1)
        self.sh(ns, f"tc qdisc add dev {dev} root handle 1: htb default 20")
        self.sh(ns, f"tc class add dev {dev} parent 1: classid 1:1 htb rate {rate} "
                    f"burst {burst} cburst {burst}")
        for cls, prio in ((10, 0), (20, 1)):
            self.sh(ns, f"tc class add dev {dev} parent 1:1 classid 1:{cls} htb rate {rate} "
                        f"ceil {rate} burst {burst} cburst {burst} prio {prio}")
            self.sh(ns, f"tc qdisc add dev {dev} parent 1:{cls} bfifo limit {queue}")
        # IPv4 total length (bytes 2-3 of the IP header) below SMALL_PACKET; a u32 match
        # works on a bridge's ports too, where iptables does not see the frames
        mask = 0xFFFF & ~(SMALL_PACKET - 1)
        self.sh(ns, f"tc filter add dev {dev} parent 1: protocol ip prio 1 u32 "
                    f"match u16 0x0000 {mask:#06x} at 2 flowid 1:10")
        return f"htb rate {rate}, small packets first"

    # ---- processes ----------------------------------------------------------------
    def spawn(self, ns: str, config: str) -> subprocess.Popen[str]:
        """Run tests/support/mesh_node.py in `ns` with a JSON config; JSON lines out."""
        return self.popen(ns, [str(NODE_SCRIPT), config])

    def popen(self, ns: str, argv: list[str]) -> subprocess.Popen[str]:
        """A Python script in `ns`: stdin/stdout pipes, stderr kept for `stderr()`."""
        err = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in close())
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            cwd=str(ROOT))
        self._stderr[proc.pid] = err
        proc.lab = self  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    # ---- teardown -----------------------------------------------------------------
    def close(self) -> list[str]:
        """Kill our processes, delete our namespaces; returns any that survived."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout, self._stderr.pop(proc.pid, None)):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for ns in reversed(self.namespaces):
            _run(["ip", "netns", "del", ns])
        listed = _run(["ip", "netns", "list"]).stdout
        return [ns for ns in self.namespaces if ns in listed.split()]

    def stderr(self, proc: subprocess.Popen[str]) -> str:
        err = self._stderr.get(proc.pid)
        if err is None:
            return ""
        err.flush()
        err.seek(0)
        return str(err.read()[-4000:])

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_event(proc: subprocess.Popen[str], event: str, timeout: float) -> dict[str, object]:
    """The next JSON line with `event` from `proc`'s stdout, within `timeout` seconds."""
    import select
    import time

    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    skipped: list[str] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {event!r} event within {timeout}s; got {skipped[-5:]}"
                               f"{_stderr_tail(proc)}")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            raise NetnsError(f"node exited (rc {proc.wait(timeout=10)}) before {event!r}; "
                             f"got {skipped[-5:]}{_stderr_tail(proc)}")
        try:
            msg = json.loads(line)
        except ValueError:
            skipped.append(line.strip())
            continue
        if msg.get("event") == event:
            return dict(msg)
        skipped.append(line.strip())


def _stderr_tail(proc: subprocess.Popen[str]) -> str:
    lab = getattr(proc, "lab", None)
    return f"\nstderr: {lab.stderr(proc)}" if lab is not None else ""


@contextlib.contextmanager
def lab_or_skip(need_iptables: bool = False) -> Iterator[Lab]:
    """A `Lab` for one test (skipped where namespaces cannot be made); on the way out
    every namespace it made must be gone."""
    import pytest

    reason = available(need_iptables=need_iptables)
    if reason:
        pytest.skip(reason)
    made = Lab()
    try:
        yield made
    finally:
        left = made.close()
        assert not left, f"namespaces left behind: {left}"
