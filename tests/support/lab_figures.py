"""What the namespace lab measures beside the nodes' own reports: the switch ports' byte
counters over time (`LinkSampler`), the RTT the peers really have (`rtt_report`), the
peers' TCP state (`tcp_state`, from `ss -ti`) and the delay-line forwarder's frames and
CPU (`line_report`). Used by benchmarks/mesh_netns_bench.py; reads only, changes
nothing in the lab.
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from typing import Any

from tests.support.delay_line import LineSpec
from tests.support.netns import Lab


class LinkSampler:
    """Byte counters of the switch's ports every `every` s, in a thread: a port's rx is
    its peer's upload, its tx the peer's download. `stop` gives per interval the mean
    use of the peers' uplinks and downlinks as fractions of the shaped rate."""

    def __init__(self, lab: Lab, switch: str, devs: list[str], every: float = 1.0) -> None:
        self.lab, self.switch, self.devs, self.every = lab, switch, devs, every
        self.samples: list[tuple[float, list[tuple[int, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> list[tuple[int, int]]:
        stats = {d["ifname"]: d["stats64"] for d in json.loads(
            self.lab.sh(self.switch, "ip -j -s link show"))}
        return [(stats[d]["rx"]["bytes"], stats[d]["tx"]["bytes"]) for d in self.devs]

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - t0, self._read()))
            self._stop.wait(self.every)

    def stop(self, up_mbit: float, down_mbit: float) -> list[list[float]]:
        """Per interval: [end s, uplinks' use, downlinks' use] (all peers together)."""
        self._stop.set()
        self._thread.join()
        out = []
        for (t0, a), (t1, b) in zip(self.samples, self.samples[1:], strict=False):
            up = sum(y[0] - x[0] for x, y in zip(a, b, strict=True)) / (t1 - t0) / (
                up_mbit * 1e6 / 8)
            down = sum(y[1] - x[1] for x, y in zip(a, b, strict=True)) / (t1 - t0) / (
                down_mbit * 1e6 / 8)
            out.append([round(t1, 1), round(up, 3), round(down, 3)])
        return out


def rtt_report(rtt_ms: float, line: LineSpec | None, ping: dict[str, Any]
               ) -> dict[str, Any]:
    """What RTT the peers really have: applied means a delay line is in place and the
    measured minimum is within 10 % (or 1 ms) of the request."""
    measured = {k: ping.get(k) for k in ("min_ms", "avg_ms", "max_ms")}
    low = ping.get("min_ms")
    applied = (line is not None and low is not None
               and abs(low - rtt_ms) <= max(1.0, 0.1 * rtt_ms))
    return {"rtt_applied": applied, "rtt_ms_measured": measured}


def tcp_state(lab: Lab, hosts: list[str]) -> dict[str, Any]:
    """The peers' established TCP connections as the kernel sees them (`ss -ti`): how
    many, their congestion control, the median smoothed RTT (ms) and congestion window
    (segments), and over all of them the seconds a socket had data waiting to be sent
    (`busy`) and the share of those it waited for the receiver's window or for its
    own send buffer: what held the senders back, if not the network. Taken before
    `go` it is the state a window's transfers start from: warm connections carry
    what the last window's queues taught them."""
    sockets: list[tuple[float, float]] = []  # (srtt ms, cwnd) of each socket with both
    count, algorithms, chrono = 0, set(), {"busy": 0, "rwnd_limited": 0, "sndbuf_limited": 0}
    for ns in hosts:
        # one socket per line that starts a row; its TCP info on the indented line after
        for line in lab.sh(ns, "ss -tinH state established").splitlines():
            if line and not line[0].isspace():
                count += 1
            if algorithm := re.match(r"\s+([a-z0-9_]+) wscale:", line):
                algorithms.add(algorithm[1])
            for key in chrono:
                if ms := re.search(rf"(?<![a-z_]){key}:(\d+)ms", line):
                    chrono[key] += int(ms[1])
            rtt = re.search(r"(?<![a-z_])rtt:([0-9.]+)/", line)
            cwnd = re.search(r"(?<![a-z_])cwnd:(\d+)", line)
            if rtt and cwnd:
                sockets.append((float(rtt[1]), float(cwnd[1])))
    if not sockets:
        return {"connections": count}
    busy = chrono["busy"]
    return {"connections": count, "congestion_control": sorted(algorithms),
            "srtt_ms_median": round(statistics.median(s[0] for s in sockets), 1),
            "cwnd_median": statistics.median(s[1] for s in sockets),
            "busy_s": round(busy / 1e3, 2),
            "rwnd_limited_share": round(chrono["rwnd_limited"] / busy, 4) if busy else 0.0,
            "sndbuf_limited_share": round(chrono["sndbuf_limited"] / busy, 4) if busy else 0.0}


def spread(values: list[float]) -> dict[str, float]:
    """p10, median and p90 of `values` (empty: {})."""
    if not values:
        return {}
    ordered = sorted(values)
    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"n": len(ordered), "p10": at(0.1), "p50": statistics.median(ordered),
            "p90": at(0.9)}


def line_report(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The delay-line forwarder's CPU seconds and the frames it carried during the
    exchange (how many, mean bytes), and its failed sends since it started."""
    if not after:
        return {}
    def total(stats: dict[str, Any], key: str) -> int:
        return sum(v[d][key] for v in stats.get("links", {}).values() for d in ("ab", "ba"))

    frames = total(after, "frames") - total(before, "frames")
    return {"delay_line_cpu_s": round(after["cpu_s"] - before["cpu_s"], 2),
            "delay_line_send_errors": total(after, "send_errors"),
            "delay_line_frames": frames,
            "delay_line_small_frames": total(after, "small") - total(before, "small"),
            "delay_line_mean_frame_b": (total(after, "bytes") - total(before, "bytes"))
            // max(1, frames)}
