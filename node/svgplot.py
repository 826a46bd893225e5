"""Minimal SVG line charts drawn by our own code (benchmarks now, dashboard later)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw),
               default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def line_chart(series: Mapping[str, Sequence[float]], *, title: str, x_label: str,
               y_label: str, width: int = 640, height: int = 360) -> str:
    """One polyline per series over x = 0, 1, 2, ...; returns an SVG document."""
    left, right, top, bottom = 64, 150, 36, 44
    values = [v for ys in series.values() for v in ys if math.isfinite(v)]
    y_lo, y_hi = (min(values), max(values)) if values else (0.0, 1.0)
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 1, y_hi + 1
    n = max((len(ys) for ys in series.values()), default=1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_at(i: int) -> float:
        return left + plot_w * (i / max(1, n - 1))

    def y_at(v: float) -> float:
        return top + plot_h * (1 - (v - y_lo) / (y_hi - y_lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2})">{escape(y_label)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        f'stroke="#888"/>',
    ]
    for tick in _ticks(y_lo, y_hi):
        y = y_at(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:.4g}</text>')
    for tick in _ticks(0, n - 1):
        if tick == int(tick):
            parts.append(f'<text x="{x_at(int(tick)):.1f}" y="{top + plot_h + 16}" '
                         f'text-anchor="middle">{int(tick)}</text>')
    for i, (name, ys) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{x_at(j):.1f},{y_at(v):.1f}" for j, v in enumerate(ys)
                          if math.isfinite(v))
        parts.append(f'<polyline class="series" data-name="{escape(name)}" points="{points}" '
                     f'fill="none" stroke="{color}" stroke-width="2"/>')
        ly = top + 14 + 18 * i
        parts.append(f'<line x1="{left + plot_w + 10}" x2="{left + plot_w + 30}" y1="{ly - 4}" '
                     f'y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{left + plot_w + 34}" y="{ly}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
