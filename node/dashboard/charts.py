"""The dashboard's charts: snapshot fields turned into inline SVG via `node.dashboard.svgplot`.

Each chart's `<svg>` carries `data-chart="<id>"` and one `class="point"` element
per data point; `CHART_IDS` lists them all (the browser test counts points per id).
"""

from __future__ import annotations

from node.dashboard.svgplot import bar_chart, timeline_chart, xy_chart
from node.status import NodeSnapshot, WindowPoint

CHART_IDS = ("heldout-loss", "wire-bytes", "throughput", "peers", "timeline")
MAX_WINDOWS = 300  # per node: bounded page size however long the run


def _recent(node: NodeSnapshot) -> list[WindowPoint]:
    return node["history"][-MAX_WINDOWS:]


def _named(nodes: list[NodeSnapshot]) -> list[tuple[str, NodeSnapshot]]:
    """(unique label, node): names come from the network and may collide; a suffix
    keeps one series per node instead of one silently replacing another."""
    seen: set[str] = set()
    out = []
    for i, n in enumerate(nodes):
        label = n["name"] if n["name"] not in seen else f"{n['name']} #{i}"
        seen.add(label)
        out.append((label, n))
    return out


def loss_chart(nodes: list[NodeSnapshot]) -> str:
    series = {k: [(float(p["window"]), p["heldout_loss"]) for p in _recent(n)
                  if p["heldout_loss"] is not None] for k, n in _named(nodes)}
    return xy_chart(series, title="Held-out loss of θ_global", x_label="window",
                    y_label="loss", chart_id="heldout-loss")


def bytes_chart(nodes: list[NodeSnapshot]) -> str:
    series = {k: [(float(p["window"]), float(p["bytes_in"] + p["bytes_out"]))
                  for p in _recent(n)] for k, n in _named(nodes)}
    return xy_chart(series, title="Bytes on the wire per window (in + out)",
                    x_label="window", y_label="bytes", chart_id="wire-bytes")


def throughput_chart(nodes: list[NodeSnapshot]) -> str:
    series = {k: [(float(p["window"]), (p["bytes_in"] + p["bytes_out"]) / p["seconds"])
                  for p in _recent(n) if p["seconds"] > 0] for k, n in _named(nodes)}
    return xy_chart(series, title="Mesh throughput per window", x_label="window",
                    y_label="bytes/s", chart_id="throughput")


def peers_chart(nodes: list[NodeSnapshot]) -> str:
    values = {k: float(n["peers"]) for k, n in _named(nodes)}
    return bar_chart(values, title="Connected mesh peers", y_label="peers", chart_id="peers")


def timeline(nodes: list[NodeSnapshot], now: float, per_node: int = 30) -> str:
    lanes = {k: [(e["t"] - now, f"w{e['window']} {e['event']}")
                 for e in n["timeline"][-per_node:]] for k, n in _named(nodes)}
    return timeline_chart(lanes, title="Recent events", x_label="seconds ago (0 = now)",
                          chart_id="timeline", width=1200)


def all_charts(nodes: list[NodeSnapshot], now: float) -> dict[str, str]:
    return {"heldout-loss": loss_chart(nodes), "wire-bytes": bytes_chart(nodes),
            "throughput": throughput_chart(nodes), "peers": peers_chart(nodes),
            "timeline": timeline(nodes, now)}
