"""Checks the namespace lab's user-space delay line on its own (root only; every
socket lives in namespaces this script creates and deletes; nothing in the root
namespace is touched).

1. rtt: ping between two namespaces through one delayed link, for requested
   RTTs 0, 20, 40, 80 ms (each direction delayed by half), requested vs measured;
   a plain veth (no line) as the floor.
2. tcp: one TCP transfer (default 50 MiB, Python sockets) over that link shaped
   to 100 Mbit/s (tbf both ways) with 40 ms RTT, against the rate and against the
   window/RTT bound from the namespaces' tcp_rmem/tcp_wmem.
3. loss: 1 % loss each way: ICMP echo loss (expect 1 − 0.99² ≈ 2 %), the
   forwarder's own drop counts, and a TCP transfer through it.
4. multi: 8 peers on a switch namespace, every link 100 Mbit/s with RTT 40 ms
   between any two peers (each link delays each direction by RTT/4), 8 TCP flows
   at once (peer i → peer i+1): does one Python forwarder keep up? Run once
   with and once without the delay line, same shaping.

Prints one table and one JSON line. Usage:
    sudo python benchmarks/delay_line_check.py [--mib 50] [--mbit 100] [--skip-multi]
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.delay_line import LineSpec
from tests.support.netns import Lab, available, read_event

SELF = str(Path(__file__).resolve())
NET = "10.56.0"
PORT = 5201
CHUNK = 1 << 20
GOODPUT = 1448 / 1514  # TCP payload per Ethernet frame (MSS with timestamps), as tbf counts


# ---- the two ends of a TCP transfer (run inside namespaces) ------------------------
def sink(host: str) -> None:
    """Accept one connection, count bytes to EOF, report the time from accept."""
    srv = socket.create_server((host, PORT))
    print(json.dumps({"event": "listening"}), flush=True)
    conn, _ = srv.accept()
    started, got = time.monotonic(), 0
    buf = bytearray(CHUNK)
    while n := conn.recv_into(buf):
        got += n
    seconds = time.monotonic() - started
    print(json.dumps({"event": "received", "bytes": got, "seconds": seconds}), flush=True)


def source(host: str, mib: float) -> None:
    with socket.create_connection((host, PORT), timeout=60) as conn:
        block, left = b"\xa5" * CHUNK, int(mib * CHUNK)
        while left > 0:
            conn.sendall(block[:left])
            left -= CHUNK
    print(json.dumps({"event": "sent"}), flush=True)


def transfers(lab: Lab, pairs: list[tuple[str, str, str]], mib: float,
              timeout: float = 600) -> list[dict[str, Any]]:
    """Run one transfer per (source ns, sink ns, sink address), all at once."""
    sinks = [lab.popen(dst, [SELF, "_sink", addr]) for _, dst, addr in pairs]
    for s in sinks:
        read_event(s, "listening", 30)
    for src, _, addr in pairs:
        lab.popen(src, [SELF, "_source", addr, str(mib)])
    out = []
    for s in sinks:
        got = read_event(s, "received", timeout)
        seconds = float(got["seconds"])  # type: ignore[arg-type]
        out.append({"bytes": got["bytes"], "seconds": round(seconds, 3),
                    "mbit_s": round(int(got["bytes"]) * 8 / seconds / 1e6, 2)})  # type: ignore[call-overload]
    return out


def tcp_buffers(lab: Lab, ns: str) -> dict[str, str]:
    names = ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.ipv4.tcp_congestion_control",
             "net.ipv4.tcp_adv_win_scale")
    out = lab.sh(ns, "sysctl " + " ".join(names))
    return dict(line.split(" = ", 1) for line in out.strip().splitlines())


# ---- the checks ----------------------------------------------------------------------
def pair(lab: Lab, line: LineSpec | None) -> tuple[str, str, str, str]:
    """Two namespaces, one link (`line` or a plain veth): (ns a, ns b, end a, end b)."""
    a, b = lab.ns("a"), lab.ns("b")
    dev_a, dev_b = lab.link(a, f"{NET}.1/24", b, f"{NET}.2/24", line=line)
    return a, b, dev_a, dev_b


def check_rtt(lab: Lab, a: str, link: str, rtts: list[float], jitter_ms: float = 0.0
              ) -> list[dict[str, Any]]:
    """Ping through the line for each requested RTT (each direction delayed by half)."""
    rows = []
    for rtt in rtts:
        lab.set_line(link, LineSpec(delay_ms=rtt / 2, jitter_ms=jitter_ms, seed=5))
        p = lab.ping(a, f"{NET}.2", count=50 if jitter_ms else 20)
        rows.append({"requested_ms": rtt, "jitter_ms": jitter_ms, **p})
    return rows


def check_tcp(lab: Lab, a: str, b: str, link: str, mib: float, mbit: float, rtt: float,
              loss: float = 0.0) -> dict[str, Any]:
    lab.set_line(link, LineSpec(delay_ms=rtt / 2, loss=loss, seed=7))
    before = lab.line_stats()["links"][link]
    got = transfers(lab, [(a, b, f"{NET}.2")], mib)[0]
    after = lab.line_stats()["links"][link]
    frames = {d: after[d]["frames"] - before[d]["frames"] for d in ("ab", "ba")}
    lost = {d: after[d]["lost"] - before[d]["lost"] for d in ("ab", "ba")}
    bufs = tcp_buffers(lab, a)
    rmem_max = int(bufs["net.ipv4.tcp_rmem"].split()[2])
    wmem_max = int(tcp_buffers(lab, b)["net.ipv4.tcp_wmem"].split()[2])
    window = min(rmem_max // 2, wmem_max)  # roughly half of rmem is advertised window
    bdp = mbit * 1e6 / 8 * rtt / 1e3
    return {"mib": mib, "mbit": mbit, "rtt_ms": rtt, "loss": loss, **got,
            "of_rate": round(got["mbit_s"] / mbit, 3),
            "goodput_ceiling_mbit_s": round(mbit * GOODPUT, 1),
            "ideal_s": round(mib * CHUNK * 8 / (mbit * GOODPUT * 1e6), 2),
            "bdp_bytes": int(bdp), "window_bytes": window,
            "window_bound_mbit_s": round(window * 8 / (rtt / 1e3) / 1e6, 1) if rtt else None,
            "slow_start_rtts": round(math.log2(max(bdp, 1) / (10 * 1448)), 1),
            "frames_ab": frames["ab"], "frames_ba": frames["ba"],
            "lost_ab": lost["ab"], "lost_ba": lost["ba"], "sysctl_a": bufs}


def check_loss(lab: Lab, a: str, link: str, loss: float) -> dict[str, Any]:
    lab.set_line(link, LineSpec(delay_ms=1.0, loss=loss, seed=11))
    before = lab.line_stats()["links"][link]
    p = lab.ping(a, f"{NET}.2", count=2000, interval=0.001)
    after = lab.line_stats()["links"][link]
    rates = {d: (after[d]["lost"] - before[d]["lost"])
             / max(1, after[d]["frames"] - before[d]["frames"]) for d in ("ab", "ba")}
    return {"requested": loss, "echo_loss": p["loss"],
            "echo_loss_expected": round(1 - (1 - loss) ** 2, 4),
            "line_loss_ab": round(rates["ab"], 4), "line_loss_ba": round(rates["ba"], 4)}


def check_multi(mib: float, mbit: float, rtt: float, line: LineSpec | None, n: int = 8
                ) -> dict[str, Any]:
    """8 peers on a switch, 8 concurrent flows; `line` on every link (or none)."""
    with Lab() as lab:
        switch = lab.ns("sw")
        lab.bridge(switch)
        hosts = []
        for i in range(n):
            ns = lab.ns(f"p{i}")
            dev, sw_dev = lab.link(ns, f"{NET}.{i + 1}/24", switch, None, line=line)
            lab.sh(switch, f"ip link set {sw_dev} master {lab.tag}br")
            lab.shape(ns, dev, mbit)
            lab.shape(switch, sw_dev, mbit)
            hosts.append(ns)
        ping = lab.ping(hosts[0], f"{NET}.2", count=10)
        before = lab.line_stats() if line else {}
        started = time.monotonic()
        flows = transfers(lab, [(hosts[i], hosts[(i + 1) % n], f"{NET}.{(i + 1) % n + 1}")
                                for i in range(n)], mib)
        wall = time.monotonic() - started
        after = lab.line_stats() if line else {}
    rates = sorted(f["mbit_s"] for f in flows)
    cpu = round(after["cpu_s"] - before["cpu_s"], 2) if line else None
    return {"delay_line": line is not None, "per_packet": bool(line and line.per_packet),
            "peers": n, "rtt_ms_requested": rtt if line else 0,
            "ping_min_ms": ping["min_ms"], "ping_avg_ms": ping["avg_ms"],
            "flow_mbit_s_min": rates[0], "flow_mbit_s_median": rates[n // 2],
            "flow_mbit_s_max": rates[-1], "aggregate_mbit_s": round(sum(rates), 1),
            "wall_s": round(wall, 2), "forwarder_cpu_s": cpu,
            "forwarder_cpu_share": round(cpu / wall, 2) if cpu is not None else None,
            "frames": sum(v[d]["frames"] for v in after.get("links", {}).values()
                          for d in ("ab", "ba")) - sum(
                v[d]["frames"] for v in before.get("links", {}).values() for d in ("ab", "ba")),
            "send_errors": sum(v[d]["send_errors"] for v in after.get("links", {}).values()
                               for d in ("ab", "ba"))}


# ---- output --------------------------------------------------------------------------
def row(check: str, setting: str, measured: str) -> str:
    return f"{check:7s} {setting:44s} {measured}"


def table(result: dict[str, Any]) -> str:
    lines = [row("check", "requested", "measured")]
    for r in result["rtt"]:
        want = "plain veth, no line" if r["requested_ms"] is None \
            else f"RTT {r['requested_ms']:g} ms" + (
                f", jitter ±{r['jitter_ms']:g} ms each way" if r.get("jitter_ms") else "")
        lines.append(row("rtt", want, f"min {r['min_ms']:.2f} / avg {r['avg_ms']:.2f} / "
                                      f"max {r['max_ms']:.2f} ms ({r['received']}/{r['sent']})"))
    for t in result["tcp"]:
        lines.append(row("tcp", f"{t['mib']:g} MiB, {t['mbit']:g} Mbit/s, RTT {t['rtt_ms']:g} ms"
                                f", loss {t['loss']:.0%}",
                         f"{t['mbit_s']:.1f} Mbit/s = {t['of_rate']:.0%} of rate "
                         f"({t['seconds']:.2f} s; ideal {t['ideal_s']:.2f} s)"))
    lo = result["loss"]
    lines.append(row("loss", f"{lo['requested']:.0%} each way, 2000 echoes",
                     f"echo loss {lo['echo_loss']:.2%} (expect {lo['echo_loss_expected']:.2%});"
                     f" line dropped {lo['line_loss_ab']:.2%} / {lo['line_loss_ba']:.2%}"))
    for m in result.get("multi", []):
        want = f"8 flows x {result['mbit']:g} Mbit/s, no line"
        if m["delay_line"]:
            want = f"8 flows x {result['mbit']:g} Mbit/s, RTT {m['rtt_ms_requested']:g} ms, " + (
                "MTU frames" if m["per_packet"] else "GSO frames")
        cpu = f"; forwarder CPU {m['forwarder_cpu_share']:.0%}" if m["delay_line"] else ""
        lines.append(row("multi", want, f"flows {m['flow_mbit_s_min']:.1f}..."
                                        f"{m['flow_mbit_s_max']:.1f} Mbit/s, ping "
                                        f"{m['ping_min_ms']:.2f} ms{cpu}"))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"mbit": args.mbit}
    with Lab() as lab:
        a, b, _, _ = pair(lab, None)
        result["rtt"] = [{"requested_ms": None, **lab.ping(a, f"{NET}.2", count=20)}]
    with Lab() as lab:
        a, b, link, dev_b = pair(lab, LineSpec())
        result["rtt"] += check_rtt(lab, a, link, [0, 20, 40, 80])
        result["rtt"] += check_rtt(lab, a, link, [40], jitter_ms=5.0)
        lab.shape(a, link, args.mbit)
        lab.shape(b, dev_b, args.mbit)
        result["tcp"] = [check_tcp(lab, a, b, link, args.mib, args.mbit, 40.0)]
        result["loss"] = check_loss(lab, a, link, 0.01)
        result["tcp"].append(check_tcp(lab, a, b, link, args.mib / 5, args.mbit, 40.0, 0.01))
    if not args.skip_multi:
        quarter = 40.0 / 4  # a peer-to-peer path crosses two links, each delayed both ways
        lines = [None, LineSpec(delay_ms=quarter), LineSpec(delay_ms=quarter, per_packet=True)]
        result["multi"] = [check_multi(args.mib, args.mbit, 40.0, line) for line in lines]
    return result


def main() -> None:
    if sys.argv[1:2] == ["_sink"]:
        return sink(sys.argv[2])
    if sys.argv[1:2] == ["_source"]:
        return source(sys.argv[2], float(sys.argv[3]))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=50.0)
    parser.add_argument("--mbit", type=float, default=100.0)
    parser.add_argument("--skip-multi", action="store_true")
    args = parser.parse_args()
    reason = available()
    if reason:
        sys.exit(f"cannot run: {reason}")
    result = run(args)
    print(table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
