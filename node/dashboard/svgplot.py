"""Minimal SVG charts drawn by our own code (benchmarks and the dashboard).

Every text that reaches the SVG is escaped here: the dashboard feeds these
functions names and events that came from the network. Charts meant for the
dashboard mark each data point with `class="point"` so tests can count them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
           "#bcbd22", "#7f7f7f", "#393b79", "#000000")

Scale = Callable[[float], float]


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw),
               default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _y_range(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    return (lo - 1, hi + 1) if hi == lo else (lo, hi)


def _open(width: int, height: int, title: str, chart_id: str | None) -> list[str]:
    ident = f' class="chart" data-chart="{escape(chart_id)}"' if chart_id is not None else ""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg"{ident} width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]


def _short(v: float) -> str:
    """Tick label with an SI suffix (96k, not 9.6e+04): byte counts stay readable."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div * 10:
            return f"{v / div:.4g}{suffix}"
    return f"{v:.4g}"


def _axes(box: tuple[int, int, int, int], height: int, x_label: str, y_label: str,
          y_range: tuple[float, float], y_at: Scale,
          fmt: Callable[[float], str] = "{:.4g}".format) -> list[str]:
    """Axis labels, the plot frame and the horizontal grid with its y tick labels."""
    left, top, plot_w, plot_h = box
    parts = [
        f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2})">{escape(y_label)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        f'stroke="#888"/>',
    ]
    for tick in _ticks(*y_range):
        y = y_at(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(tick)}</text>')
    return parts


def _x_ticks(lo: float, hi: float, x_at: Scale, y: float, integer: bool) -> list[str]:
    parts = []
    for tick in _ticks(lo, hi):
        if integer and tick != int(tick):
            continue
        label = f"{int(tick)}" if integer else f"{tick:.4g}"
        parts.append(f'<text x="{x_at(tick):.1f}" y="{y}" text-anchor="middle">{label}</text>')
    return parts


def _legend(i: int, name: str, color: str, x: int, top: int) -> list[str]:
    ly = top + 14 + 18 * i
    return [f'<line x1="{x + 10}" x2="{x + 30}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
            f'stroke-width="2"/>',
            f'<text x="{x + 34}" y="{ly}">{escape(name)}</text>']


def line_chart(series: Mapping[str, Sequence[float]], *, title: str, x_label: str,
               y_label: str, width: int = 640, height: int = 360) -> str:
    """One polyline per series over x = 0, 1, 2, ...; returns an SVG document."""
    left, right, top, bottom = 64, 150, 36, 44
    y_lo, y_hi = _y_range([v for ys in series.values() for v in ys])
    n = max((len(ys) for ys in series.values()), default=1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_at(i: float) -> float:
        return left + plot_w * (i / max(1, n - 1))

    def y_at(v: float) -> float:
        return top + plot_h * (1 - (v - y_lo) / (y_hi - y_lo))

    parts = _open(width, height, title, None)
    parts += _axes((left, top, plot_w, plot_h), height, x_label, y_label, (y_lo, y_hi), y_at)
    parts += _x_ticks(0, n - 1, x_at, top + plot_h + 16, integer=True)
    for i, (name, ys) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{x_at(j):.1f},{y_at(v):.1f}" for j, v in enumerate(ys)
                          if math.isfinite(v))
        parts.append(f'<polyline class="series" data-name="{escape(name)}" points="{points}" '
                     f'fill="none" stroke="{color}" stroke-width="2"/>')
        parts += _legend(i, name, color, left + plot_w, top)
    parts.append("</svg>")
    return "\n".join(parts)


def xy_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str, x_label: str,
             y_label: str, chart_id: str, width: int = 600, height: int = 320,
             integer_x: bool = True, legend_width: int = 150) -> str:
    """One polyline per series through explicit (x, y) points, each drawn as a
    `<circle class="point">` with a tooltip; non-finite points are left out. The legend
    takes `legend_width` pixels right of the plot."""
    left, right, top, bottom = 64, legend_width, 36, 44
    clean = {name: [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
             for name, pts in series.items()}
    xs = [x for pts in clean.values() for x, _ in pts]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y_lo, y_hi = _y_range([y for pts in clean.values() for _, y in pts])
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_at(x: float) -> float:
        return left + plot_w * ((x - x_lo) / (x_hi - x_lo) if x_hi > x_lo else 0.5)

    def y_at(v: float) -> float:
        return top + plot_h * (1 - (v - y_lo) / (y_hi - y_lo))

    parts = _open(width, height, title, chart_id)
    parts += _axes((left, top, plot_w, plot_h), height, x_label, y_label, (y_lo, y_hi), y_at,
                   _short)
    parts += _x_ticks(x_lo, x_hi, x_at, top + plot_h + 16, integer_x)
    if not xs:
        parts.append(_no_data(left + plot_w / 2, top + plot_h / 2))
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{x_at(x):.1f},{y_at(y):.1f}" for x, y in pts)
        parts.append(f'<polyline class="series" data-name="{escape(name)}" points="{coords}" '
                     f'fill="none" stroke="{color}" stroke-width="2"/>')
        parts += [f'<circle class="point" cx="{x_at(x):.1f}" cy="{y_at(y):.1f}" r="2.5" '
                  f'fill="{color}"><title>{escape(name)} {x:.6g}: {y:.6g}</title></circle>'
                  for x, y in pts]
        parts += _legend(i, name, color, left + plot_w, top)
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart(values: Mapping[str, float], *, title: str, y_label: str, chart_id: str,
              width: int = 600, height: int = 320) -> str:
    """One `<rect class="point">` bar per name, from zero up."""
    left, right, top, bottom = 64, 24, 36, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    y_hi = max([*finite.values(), 1.0])
    y_lo = min([*finite.values(), 0.0])

    def y_at(v: float) -> float:
        return top + plot_h * (1 - (v - y_lo) / (y_hi - y_lo))

    parts = _open(width, height, title, chart_id)
    parts += _axes((left, top, plot_w, plot_h), height, "", y_label, (y_lo, y_hi), y_at,
                   _short)
    if not finite:
        parts.append(_no_data(left + plot_w / 2, top + plot_h / 2))
    slot = plot_w / max(1, len(finite))
    for i, (name, v) in enumerate(finite.items()):
        x, y0, y1 = left + slot * i + slot * 0.15, y_at(max(v, 0.0)), y_at(min(v, 0.0))
        label = escape(name if len(name) <= 16 else name[:15] + "…")
        parts.append(f'<rect class="point" x="{x:.1f}" y="{y0:.1f}" width="{slot * 0.7:.1f}" '
                     f'height="{max(y1 - y0, 1.0):.1f}" fill="{PALETTE[i % len(PALETTE)]}">'
                     f"<title>{escape(name)}: {v:.6g}</title></rect>")
        parts.append(f'<text x="{x + slot * 0.35:.1f}" y="{top + plot_h + 16}" '
                     f'text-anchor="middle">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def timeline_chart(lanes: Mapping[str, Sequence[tuple[float, str]]], *, title: str,
                   x_label: str, chart_id: str, width: int = 640, lane_height: int = 28) -> str:
    """One horizontal lane per name; each (x, label) event is a `<circle class="point">`
    whose tooltip is the label (x is usually seconds relative to now)."""
    left, right, top, bottom = 120, 24, 36, 44
    height = top + bottom + lane_height * max(1, len(lanes))
    plot_w = width - left - right
    xs = [x for events in lanes.values() for x, _ in events if math.isfinite(x)]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)

    def x_at(x: float) -> float:
        return left + plot_w * ((x - x_lo) / (x_hi - x_lo) if x_hi > x_lo else 0.5)

    parts = _open(width, height, title, chart_id)
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">'
                 f"{escape(x_label)}</text>")
    parts += _x_ticks(x_lo, x_hi, x_at, height - bottom + 16, integer=False)
    if not xs:
        parts.append(_no_data(left + plot_w / 2, top + lane_height / 2))
    for i, (name, events) in enumerate(lanes.items()):
        y, color = top + lane_height * (i + 0.5), PALETTE[i % len(PALETTE)]
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y}" y2="{y}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{escape(name)}</text>')
        parts += [f'<circle class="point" cx="{x_at(x):.1f}" cy="{y}" r="4" fill="{color}">'
                  f"<title>{escape(label)}</title></circle>"
                  for x, label in events if math.isfinite(x)]
    parts.append("</svg>")
    return "\n".join(parts)


def _no_data(x: float, y: float) -> str:
    return f'<text class="no-data" x="{x}" y="{y}" text-anchor="middle" fill="#999">no data</text>'
