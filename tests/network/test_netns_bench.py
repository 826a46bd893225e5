"""benchmarks/mesh_netns_bench.py end to end, small: its figures come from real nodes
in namespaces it makes and removes, and a run of several windows reuses one set of
nodes (root only; skipped elsewhere)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("libp2p")

from tests.support.netns import available

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "mesh_netns_bench.py"


def test_two_windows_of_dissemination_each_report_their_own_figures() -> None:
    reason = available()
    if reason:
        pytest.skip(reason)
    out = subprocess.run(
        [sys.executable, str(BENCH), "dissemination", "--peers", "3", "--mib", "1",
         "--mbit", "100", "--rtt-ms", "0", "--windows", "2", "--json"],
        capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r.get("window") for r in rows] == [1, 2], rows
    for row in rows:
        assert row["all_ok"], row
        # each window fetched its own blobs once, not the first window's again
        assert row["bytes_in_per_needed"] == pytest.approx(1.0, abs=0.05), row
        assert row["slowest_peer_s"] >= row["lower_bound_s"]
        assert row["too_slow_cutoffs"] == 0
        # every piece answer's wait for its first byte: 3 peers x 2 blobs of one piece
        waits = row["piece_first_byte_ms"]
        assert waits["n"] == 6, waits
        assert 0 <= waits["p10"] <= waits["p50"] <= waits["p90"], waits
        end = row["tcp_at_end"]
        assert end["congestion_control"], end
        assert end["busy_s"] > 0, end
        assert 0 <= end["rwnd_limited_share"] <= 1, end
        assert 0 <= end["sndbuf_limited_share"] <= 1, end
    # the second window starts on the connections the first made: every pair, both ends
    assert rows[1]["tcp_at_go"]["connections"] >= max(6, rows[0]["tcp_at_go"]["connections"])
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=False).stdout
    assert "gm" not in listed  # the bench removed what it made
