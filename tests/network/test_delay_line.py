"""The namespace lab's user-space delay line (tests/support/delay_line.py).

The schedule is a pure function and is tested anywhere. The end-to-end check
needs root and iproute2: two namespaces this test creates, joined through the
lab's delay namespace, ping each other; everything is removed by `Lab.close()`.
Network safety: no address or socket in the root namespace.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
from collections.abc import Iterator

import pytest

from tests.support.delay_line import (
    SMALL_FRAME,
    Direction,
    Forwarder,
    LineSpec,
    command,
    schedule,
)
from tests.support.netns import Lab, NetnsError, cpu_mask, lab_or_skip, qdisc_available

ARRIVALS = [i * 1e-4 for i in range(2000)]  # 10,000 frames/s for 0.2 s


def test_a_cpu_mask_is_written_in_32_bit_groups() -> None:
    assert cpu_mask(2) == "3"
    assert cpu_mask(32) == "ffffffff"
    assert cpu_mask(40) == "ff,ffffffff"
    assert cpu_mask(64) == "ffffffff,ffffffff"
    assert cpu_mask(65) == "1,ffffffff,ffffffff"


def test_constant_delay_keeps_order_and_adds_the_delay() -> None:
    out = schedule(ARRIVALS, LineSpec(delay_ms=20), "x")
    assert out == [t + 0.02 for t in ARRIVALS]


def test_schedule_is_a_function_of_seed_and_stream() -> None:
    spec = LineSpec(delay_ms=10, jitter_ms=3, loss=0.05, seed=4)
    assert schedule(ARRIVALS, spec, "ab") == schedule(ARRIVALS, spec, "ab")
    assert schedule(ARRIVALS, spec, "ab") != schedule(ARRIVALS, spec, "ba")
    assert schedule(ARRIVALS, spec, "ab") != schedule(ARRIVALS, LineSpec(
        delay_ms=10, jitter_ms=3, loss=0.05, seed=5), "ab")


def test_jitter_stays_in_bounds_and_never_releases_early() -> None:
    out = schedule(ARRIVALS, LineSpec(delay_ms=1, jitter_ms=2, seed=1), "x")
    offsets = [r - t for r, t in zip(out, ARRIVALS, strict=True) if r is not None]
    assert len(offsets) == len(ARRIVALS)
    assert min(offsets) == 0.0  # clamped: 1 ms - up to 2 ms
    assert max(offsets) <= 0.003 + 1e-12
    assert any(0.0 < o < 0.001 for o in offsets)
    assert any(o > 0.002 for o in offsets)


def test_loss_rate_is_close_to_the_setting() -> None:
    arrivals = [i * 1e-5 for i in range(100_000)]
    lost = schedule(arrivals, LineSpec(loss=0.01, seed=3), "x").count(None)
    assert 800 <= lost <= 1200  # binomial(100k, 1 %): sd ~31


def test_bad_settings_are_refused() -> None:
    for bad in ({"delay_ms": -1}, {"jitter_ms": -1}, {"loss": 1.0}, {"loss": -0.1}):
        with pytest.raises(ValueError, match="must be"):
            LineSpec(**bad)


def test_forwarder_answers_every_command_even_a_failed_one(
        capsys: pytest.CaptureFixture[str]) -> None:
    fwd = Forwarder()
    for line in ('{"cmd": "nope"}', "not json", '{"cmd": "set", "name": "x", "spec": {}}',
                 '{"cmd": "add", "name": "x", "a": "gmnosuchdev0", "b": "gmnosuchdev1", '
                 '"spec": {"delay_ms": 1}}', '{"cmd": "stats"}'):
        command(fwd, line)
    replies = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["event"] for r in replies] == ["reply"] * 5
    assert [r["ok"] for r in replies] == [False, False, False, False, True]
    assert replies[-1]["links"] == {}


def test_the_forwarder_counts_small_frames_apart() -> None:
    """Bare ACKs (76 bytes with the vnet header) and data frames, told apart by size."""
    src, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with src, far:
        src.setblocking(False)
        d = Direction("x:ab", src, far, LineSpec(), random.Random(0))
        for size in (76, SMALL_FRAME, SMALL_FRAME + 1, 4_000, 90):
            far.send(b"\0" * size)
        Forwarder().receive(d)
    assert d.counters()["frames"] == 5
    assert d.counters()["small"] == 3
    assert d.counters()["bytes"] == 76 + SMALL_FRAME + SMALL_FRAME + 1 + 4_000 + 90


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_or_skip() as made:
        yield made


def test_a_link_whose_end_cannot_be_steered_is_listed_not_refused(lab: Lab) -> None:
    """Where a kernel has no RPS the lab still builds its links, unsteered, and says
    so (a device without an `rps_cpus` file stands for such a kernel)."""
    a = lab.ns("a")
    with pytest.warns(RuntimeWarning, match="no receive packet steering"):
        lab._steer(a, "gmnosuchdev")
    assert lab.unsteered == ["gmnosuchdev"]


def test_ping_through_the_line_has_the_requested_rtt(lab: Lab) -> None:
    a, b = lab.ns("a"), lab.ns("b")
    link, far = lab.link(a, "10.57.0.1/24", b, "10.57.0.2/24", line=LineSpec(delay_ms=15))
    for ns, dev in ((a, link), (b, far)):  # what the line sends is received on any core
        has_rps = lab.sh(ns, f"test -w /sys/class/net/{dev}/queues/rx-0/rps_cpus "
                             "&& echo yes || echo no").strip() == "yes"
        assert (dev in lab.unsteered) == (not has_rps)
        if not has_rps:
            continue
        mask = lab.sh(ns, f"cat /sys/class/net/{dev}/queues/rx-0/rps_cpus")
        assert int(mask.strip().replace(",", ""), 16) == (1 << (os.cpu_count() or 1)) - 1
    rtt = lab.ping(a, "10.57.0.2", count=10)
    assert rtt["received"] == 10
    # can't be faster than 2 x 15 ms; the minimum is robust to a loaded machine
    assert 30.0 <= rtt["min_ms"] <= 33.0, rtt
    lab.set_line(link, LineSpec(delay_ms=0))
    assert lab.ping(a, "10.57.0.2", count=5)["min_ms"] < 3.0
    with pytest.raises(NetnsError, match="not a delayed link"):
        lab.set_line("gmnosuchlink", LineSpec())
    counts = lab.line_stats()["links"][link]
    assert counts["ab"]["frames"] >= 16
    assert counts["ba"]["frames"] >= 16
    assert counts["ab"]["lost"] == counts["ba"]["lost"] == 0


def test_shape_refuses_a_delay_it_cannot_apply(lab: Lab) -> None:
    if qdisc_available("netem"):
        pytest.skip("this kernel has netem: shape() applies the delay itself")
    a, b = lab.ns("a"), lab.ns("b")
    dev, _ = lab.link(a, None, b, None)
    with pytest.raises(NetnsError, match="netem"):
        lab.shape(a, dev, 100, delay_ms=20)


SERVE = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 5001))
s.listen()
print("ready", flush=True)
c, _ = s.accept()
n = 0
while data := c.recv(1 << 20):
    n += len(data)
print(n, flush=True)
"""
SEND = """
import socket, sys
with socket.create_connection((sys.argv[1], 5001)) as s:
    s.sendall(bytes(4 << 20))
"""


def class_packets(lab: Lab, ns: str, dev: str) -> dict[str, int]:
    """Packets each htb class on `dev` has sent (`tc -s class show`)."""
    out = lab.sh(ns, f"tc -s class show dev {dev}")
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r"class htb (1:\d+) .*?Sent \d+ bytes (\d+) pkt", out, re.S)}


def test_acks_first_shaping_sends_the_acks_ahead_of_the_data(lab: Lab) -> None:
    """`shape(..., acks_first=True)`: a bulk transfer's data leaves the sender through
    the data class, and the receiver's ACKs leave through the small-packet class."""
    if not qdisc_available("htb"):
        pytest.skip("no htb in this kernel")
    a, b = lab.ns("a"), lab.ns("b")
    dev_a, dev_b = lab.link(a, "10.58.0.1/24", b, "10.58.0.2/24")
    for ns, dev in ((a, dev_a), (b, dev_b)):
        assert "small packets first" in lab.shape(ns, dev, 50, acks_first=True)
    server = lab.popen(b, ["-c", SERVE, "10.58.0.2"])
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    client = lab.popen(a, ["-c", SEND, "10.58.0.2"])
    assert client.wait(timeout=60) == 0, lab.stderr(client)
    assert server.stdout.readline().strip() == str(4 << 20)
    sent, acked = class_packets(lab, a, dev_a), class_packets(lab, b, dev_b)
    assert sent["1:20"] > 20 * sent["1:10"]  # the data; beside it, the handshake
    assert acked["1:10"] >= 50  # the ACKs; beside them, ARP and the like
    assert acked["1:10"] > 10 * acked["1:20"]
