"""Server-rendered HTML of one snapshot.

Every string that came from a snapshot came from the network: it goes through
`html.escape` (via `_cell`, or inside `node.dashboard.svgplot`) and nowhere else. Cells
built here from escaped parts are wrapped in `Safe` so they are not escaped twice.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterable, Sequence
from html import escape

from node.dashboard.charts import all_charts
from node.status import ChainSnapshot, NodeSnapshot, Snapshot

CSS = """
body{font-family:sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:20px 0 6px}
.meta{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:12px;background:white;margin-bottom:8px}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left}td.n{text-align:right}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.bad{color:#b00020;font-weight:bold}.good{color:#2a7a2a}
code{font-size:11px}
"""
# the CSP allows this one stylesheet by hash: no inline style or script of any other origin
CSS_HASH = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()


class Safe(str):
    """Markup already escaped by this module."""


def _cell(value: object) -> str:
    if isinstance(value, Safe):
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    return escape(str(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], cls: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f'<td class="n">{_cell(v)}</td>' if isinstance(v, int | float) else f"<td>{_cell(v)}</td>"
        for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _chain(chain: ChainSnapshot | None) -> str:
    if chain is None:
        return '<h2>Chain</h2><p class="bad">chain not readable</p>'
    summary = _table(
        ["kind", "contract", "block", "window", "epoch", "blocks/window", "windows/epoch",
         "aggregation set"],
        [[chain["kind"], Safe(f"<code>{escape(chain['contract'])}</code>"), chain["block"],
          chain["window"], chain["epoch"], chain["blocks_per_window"],
          chain["windows_per_epoch"], ", ".join(str(u) for u in chain["aggregation_set"])]],
        "chain")
    balances = _table(["uid", "role", "address", "stake (wei)", "claimable (wei)"],
                      [[b["uid"], b["role"], Safe(f"<code>{escape(b['address'])}</code>"),
                        b["stake_wei"], b["claimable_wei"]] for b in chain["balances"]],
                      "balances")
    return f"<h2>Chain</h2>{summary}<h2>Balances</h2>{balances}"


def _nodes(nodes: list[NodeSnapshot]) -> str:
    rows = []
    for n in nodes:
        last = n["history"][-1] if n["history"] else None
        loss = last["heldout_loss"] if last and last["heldout_loss"] is not None else "–"
        state = Safe(f'<span class="{"bad" if n["state"] == "unreachable" else "good"}">'
                     f'{escape(n["state"])}</span>')
        rows.append([n["name"], n["role"], state, n["window"], n["peers"], n["bytes_in"],
                     n["bytes_out"], loss, last["param_digest"][:12] if last else "–",
                     Safe(f"<code>{escape(n['address'])}</code>"), n["peer_id"][:16]])
    return _table(["node", "role", "state", "window", "peers", "bytes in", "bytes out",
                   "held-out loss", "θ digest", "address", "peer id"], rows, "nodes")


def _agreement(nodes: list[NodeSnapshot]) -> str:
    """Honest nodes hold the same θ after each window: show the latest window that at
    least two nodes report, and whether their digests agree."""
    digests: dict[int, set[str]] = {}
    counts: dict[int, int] = {}
    for n in nodes:
        for p in n["history"]:
            digests.setdefault(p["window"], set()).add(p["param_digest"])
            counts[p["window"]] = counts.get(p["window"], 0) + 1
    shared = [w for w, c in counts.items() if c >= 2]
    if not shared:
        return '<p class="meta">θ agreement: fewer than two nodes report a window yet</p>'
    w = max(shared)
    if len(digests[w]) == 1:
        return f'<p class="good">θ agreement: window {w}, {counts[w]} nodes, one digest</p>'
    return (f'<p class="bad">θ agreement: window {w}, {counts[w]} nodes, '
            f"{len(digests[w])} different digests</p>")


def _events(nodes: list[NodeSnapshot], per_node: int = 6) -> str:
    rows = []
    for n in nodes:
        recent = reversed(n["timeline"][-per_node:])
        text = " · ".join(escape(f"{time.strftime('%H:%M:%S', time.gmtime(e['t']))} "
                                 f"w{e['window']} {e['event']}") for e in recent)
        rows.append([n["name"], n["state"], Safe(text or "–")])
    return _table(["node", "state", "latest events (UTC, newest first)"], rows, "events")


def _scores(nodes: list[NodeSnapshot]) -> str:
    parts = []
    for n in nodes:
        if not n["scores"]:
            continue
        rows = [[s["uid"], Safe(f"<code>{escape(s['address'])}</code>"), s["status"],
                 s["reason"], s["score"], s["mu"], s["sigma"], s["weight"]]
                for s in n["scores"]]
        parts.append(f"<h2>Scores by {escape(n['name'])}</h2>" + _table(
            ["uid", "address", "status", "reason", "score", "μ", "σ", "weight"], rows, "scores"))
    return "".join(parts) or "<h2>Scores</h2><p class=\"meta\">no validator reports scores</p>"


def render_page(snap: Snapshot, *, title: str, refresh_seconds: int) -> str:
    nodes = snap["nodes"]
    charts = all_charts(nodes, now=snap["generated_at"])
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snap["generated_at"]))
    grid = "".join(charts[k] for k in ("heldout-loss", "wire-bytes", "throughput", "peers"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{int(refresh_seconds)}">
<title>{escape(title)}</title><style>{CSS}</style></head>
<body><h1>{escape(title)}</h1>
<p class="meta">run <code>{escape(snap['run'])}</code> · {len(nodes)} nodes · {when}
· refreshes every {int(refresh_seconds)} s</p>
<h2>Nodes</h2>{_nodes(nodes)}{_agreement(nodes)}
<div class="grid">{grid}</div>
<h2>Timeline</h2>{charts['timeline']}{_events(nodes)}
{_scores(nodes)}
{_chain(snap['chain'])}
</body></html>"""


def render_error(message: str, *, title: str, refresh_seconds: int) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{int(refresh_seconds)}">
<title>{escape(title)}</title><style>{CSS}</style></head>
<body><h1>{escape(title)}</h1><p class="bad">snapshot unavailable: {escape(message)}</p>
</body></html>"""
