"""The dashboard in headless Chromium: every chart has points, the page grows with
the run, network strings stay inert, and a non-blank screenshot is kept as an artifact.

The browser loads http://127.0.0.1 only (see tests/support/browser.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.dashboard import make_app, start_server, stop_server
from node.dashboard.charts import CHART_IDS
from node.dashboard.sample import GrowingProvider
from node.dashboard.svgplot import PALETTE
from tests.support.browser import (
    BrowserError,
    count_points,
    distinct_colors,
    dump_dom,
    find_chromium,
    has_color,
    png_pixels,
    screenshot,
)

REPO = Path(__file__).resolve().parents[2]
EVIL = "<script>document.title='pwned'</script>"
MINERS, VALIDATORS = 3, 2
needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="no chromium binary (apt-get install chromium, or set GRADMESH_CHROMIUM)")


def artifacts_dir() -> Path:
    path = Path(os.environ.get("GRADMESH_TEST_ARTIFACTS", REPO / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
async def dashboard() -> AsyncIterator[str]:
    provider = GrowingProvider(start=3, interval=0.5, miners=MINERS, validators=VALIDATORS,
                               reason=EVIL)
    runner, url = await start_server(make_app(provider, title="gradmesh e2e"))
    try:
        yield url + "/"
    finally:
        await stop_server(runner)


async def _dom(url: str) -> str:
    # Chromium blocks; a thread keeps this loop (and so the server) answering
    return await asyncio.to_thread(dump_dom, url, 60.0)


@needs_chromium
async def test_every_chart_has_points_and_the_page_grows(dashboard: str) -> None:
    dom = await _dom(dashboard)
    points = count_points(dom)
    assert set(points) == set(CHART_IDS)
    assert all(n > 0 for n in points.values()), points
    nodes = MINERS + VALIDATORS
    assert points["peers"] == nodes
    assert points["heldout-loss"] >= 3 * nodes
    assert points["heldout-loss"] % nodes == 0
    assert "<script" not in dom  # the page has no script; the network's one is text
    assert "&lt;script&gt;document.title" in dom
    assert "<title>gradmesh e2e</title>" in dom
    (artifacts_dir() / "dashboard.html").write_text(dom)

    deadline = time.monotonic() + 60
    while count_points(dom)["heldout-loss"] <= points["heldout-loss"]:
        assert time.monotonic() < deadline, "the page never showed a newer window"
        dom = await _dom(dashboard)


@needs_chromium
async def test_screenshot_is_not_blank(dashboard: str) -> None:
    path = await asyncio.to_thread(screenshot, dashboard, artifacts_dir() / "dashboard.png",
                                   60.0, (1280, 1800))
    assert path.stat().st_size > 10_000
    pixels = await asyncio.to_thread(png_pixels, path)
    assert pixels.shape == (1800, 1280, 3)
    assert distinct_colors(pixels) > 50
    for color in PALETTE[:MINERS]:  # the series lines and bars were painted
        assert has_color(pixels, color), color


@pytest.mark.parametrize("url", ["http://example.com/", "http://localhost:1/",
                                 "https://127.0.0.1/", "file:///etc/passwd"])
def test_browser_refuses_anything_but_loopback_http(url: str) -> None:
    with pytest.raises(BrowserError, match=r"only http://127\.0\.0\.1"):
        dump_dom(url)
    with pytest.raises(BrowserError, match=r"only http://127\.0\.0\.1"):
        screenshot(url, artifacts_dir() / "never.png")
