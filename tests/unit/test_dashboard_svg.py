"""node.dashboard.svgplot: the charts mark and escape their points; line_chart is as before."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from node.dashboard.svgplot import bar_chart, line_chart, timeline_chart, xy_chart
from tests.support.browser import count_points

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML is a precondition of inline use


def test_xy_chart_draws_one_point_per_finite_pair() -> None:
    svg = xy_chart({"a": [(0, 1.0), (1, math.nan), (2, 0.5)], "b": [(1, 2.0)]},
                   title="t", x_label="x", y_label="y", chart_id="c")
    root = _parse(svg)
    assert root.get("data-chart") == "c"
    assert len(root.findall(f"{SVG}circle[@class='point']")) == 3
    assert count_points(svg) == {"c": 3}


def test_the_legend_gets_the_width_asked_for_right_of_the_plot() -> None:
    """Long series names get room: the plot ends `legend_width` pixels from the right."""
    for legend in (150, 500):
        root = _parse(xy_chart({"a": [(0, 1.0), (10, 2.0)]}, title="t", x_label="x",
                               y_label="y", chart_id="c", width=1000, legend_width=legend))
        xs = [float(c.get("cx", "nan")) for c in root.findall(f"{SVG}circle[@class='point']")]
        assert max(xs) == 1000 - legend


def test_names_and_labels_are_escaped() -> None:
    evil = "<script>alert(1)</script>"
    for svg in (xy_chart({evil: [(0, 1.0)]}, title=evil, x_label=evil, y_label=evil,
                         chart_id=evil),
                bar_chart({evil: 1.0}, title=evil, y_label=evil, chart_id="b"),
                timeline_chart({evil: [(0.0, evil)]}, title=evil, x_label=evil, chart_id="t")):
        assert "<script" not in svg
        root = _parse(svg)
        assert not root.findall(f".//{SVG}script")


def test_empty_charts_say_no_data() -> None:
    for svg in (xy_chart({}, title="t", x_label="x", y_label="y", chart_id="c"),
                bar_chart({}, title="t", y_label="y", chart_id="b"),
                timeline_chart({}, title="t", x_label="x", chart_id="t")):
        root = _parse(svg)
        assert root.findall(f"{SVG}text[@class='no-data']")
        assert sum(count_points(svg).values()) == 0


def test_bar_and_timeline_points() -> None:
    assert count_points(bar_chart({"a": 3, "b": 0, "c": math.inf}, title="t", y_label="y",
                                  chart_id="b")) == {"b": 2}
    lanes = {"n0": [(-3.0, "trained"), (-1.0, "applied")], "n1": [(-2.0, "published")]}
    assert count_points(timeline_chart(lanes, title="t", x_label="s", chart_id="t")) == {"t": 3}


def test_line_chart_keeps_its_shape() -> None:
    svg = line_chart({"a": [3.0, 2.0, math.nan, 1.0], "b": [4.0, 3.0]}, title="t",
                     x_label="x", y_label="y")
    root = _parse(svg)
    assert root.get("data-chart") is None
    assert root.get("width") == "640"
    lines = root.findall(f"{SVG}polyline")
    assert [p.get("data-name") for p in lines] == ["a", "b"]
    assert len(lines[0].get("points", "").split()) == 3
    assert not root.findall(f"{SVG}circle")
