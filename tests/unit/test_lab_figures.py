"""The namespace lab's figures from what the kernel prints (tests/support/lab_figures.py):
`tcp_state` reads `ss -tinH` as this kernel writes it; `spread` gives the quantiles the
bench reports. Canned output here; the root-only bench test reads the real thing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from tests.support.lab_figures import spread, tcp_state

# two peers' sockets, cut from a real 4-peer run (one line of TCP info per socket)
SS = {
    "p0": ("0      0      10.97.0.1:4001 10.97.0.2:53134\n"
           "\t bbr wscale:10,10 rto:256 rtt:52.097/5.9 ato:40 mss:1448 cwnd:294 "
           "bbr:(bw:37852408bps,mrtt:40.264,pacing_gain:1.25,cwnd_gain:2) "
           "app_limited busy:6608ms rwnd_limited:36ms(0.5%) unacked:2 rcv_rtt:40\n"
           "0      0      10.97.0.1:4001 10.97.0.3:59236\n"
           "\t cubic wscale:10,10 rto:264 rtt:61.788/5.362 ato:40 mss:1448 cwnd:356 "
           "busy:1392ms sndbuf_limited:8ms(0.6%) rcv_rtt:41\n"),
    "p1": ("0      0      10.97.0.2:53134 10.97.0.1:4001\n"
           "\t bbr wscale:10,10 rto:244 rtt:42.282/1.565 ato:40 mss:1448 cwnd:25 "
           "bytes_acked:4753 minrtt:40.44\n"),
}


def fake_lab(outputs: dict[str, str]) -> Any:
    return SimpleNamespace(sh=lambda ns, command: outputs[ns])


def test_tcp_state_counts_sockets_and_what_held_their_senders_back() -> None:
    state = tcp_state(cast(Any, fake_lab(SS)), ["p0", "p1"])
    assert state["connections"] == 3
    assert state["congestion_control"] == ["bbr", "cubic"]
    assert state["srtt_ms_median"] == 52.1
    assert state["cwnd_median"] == 294
    assert state["busy_s"] == 8.0  # 6608 + 1392 ms; the third socket reports none
    assert state["rwnd_limited_share"] == round(36 / 8000, 4)
    assert state["sndbuf_limited_share"] == round(8 / 8000, 4)


def test_tcp_state_of_peers_without_connections() -> None:
    assert tcp_state(cast(Any, fake_lab({"p0": ""})), ["p0"]) == {"connections": 0}


def test_spread_gives_the_quantiles_the_bench_reports() -> None:
    assert spread([]) == {}
    figures = spread([float(v) for v in range(100, 0, -1)])  # 1..100, unordered
    assert figures == {"n": 100, "p10": 11.0, "p50": 50.5, "p90": 91.0}
    assert spread([7.0]) == {"n": 1, "p10": 7.0, "p50": 7.0, "p90": 7.0}
