"""The dashboard app's routes over a fake provider (aiohttp TestServer on 127.0.0.1)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from node.dashboard import make_app
from node.dashboard.charts import CHART_IDS
from node.dashboard.sample import StaticProvider, sample_snapshot
from node.dashboard.validate import check_snapshot
from node.status import Snapshot
from tests.support.browser import count_points

Client = TestClient[web.Request, web.Application]
EVIL = "<script>alert('pwned')</script>"
EVIL_NAME = '<img src=x onerror="alert(1)">'


def _evil_snapshot() -> Snapshot:
    snap = sample_snapshot(reason=EVIL, windows=6)
    snap["nodes"][1]["name"] = EVIL_NAME
    snap["nodes"][0]["timeline"][-1]["event"] = EVIL
    assert snap["chain"] is not None
    snap["chain"]["balances"][0]["address"] = EVIL
    return snap


@pytest.fixture
def provider() -> StaticProvider:
    return StaticProvider(_evil_snapshot())


@pytest.fixture
async def client(provider: StaticProvider) -> AsyncIterator[Client]:
    async with TestClient(TestServer(make_app(provider, title="test <mesh>"),
                                     host="127.0.0.1")) as c:
        yield c


async def test_index_draws_every_chart_with_points(client: Client) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    points = count_points(await resp.text())
    assert set(points) == set(CHART_IDS)
    assert points["heldout-loss"] == 4 * 6  # 4 nodes × 6 windows
    assert points["wire-bytes"] == 4 * 6
    assert points["throughput"] == 4 * 6
    assert points["peers"] == 4
    assert points["timeline"] > 0


async def test_index_shows_tables_and_refreshes(client: Client) -> None:
    html = await (await client.get("/")).text()
    assert '<meta http-equiv="refresh" content="5">' in html
    for marker in ('class="nodes"', 'class="scores"', 'class="balances"', 'class="chain"',
                   'class="events"', "θ agreement: window 5, 4 nodes, one digest"):
        assert marker in html
    assert "<title>test &lt;mesh&gt;</title>" in html


async def test_network_strings_are_escaped(client: Client) -> None:
    html = await (await client.get("/")).text()
    assert "<script" not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


async def test_security_headers_forbid_scripts(client: Client) -> None:
    for path in ("/", "/api/snapshot", "/metrics", "/healthz", "/missing"):
        resp = await client.get(path)
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp
        assert "unsafe-inline" not in csp
        assert "script-src" not in csp  # scripts fall back to default-src 'none'
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    html = await (await client.get("/")).text()
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp


async def test_api_snapshot_is_the_snapshot(client: Client,
                                            provider: StaticProvider) -> None:
    resp = await client.get("/api/snapshot")
    assert resp.status == 200
    body = await resp.json()
    assert body == provider.snap
    check_snapshot(body)


async def test_only_get(client: Client) -> None:
    for path in ("/", "/api/snapshot", "/metrics", "/healthz"):
        assert (await client.post(path)).status == 405


async def test_healthz(client: Client, provider: StaticProvider) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"ok": True, "reason": "ok"}
    provider.healthy = (False, "chain <down>")
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert await resp.json() == {"ok": False, "reason": "chain <down>"}


async def test_healthz_when_health_raises(client: Client,
                                          provider: StaticProvider) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("no health")

    provider.health = broken  # type: ignore[method-assign]
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert (await resp.json())["reason"] == "RuntimeError: no health"


async def test_provider_raising_gives_503_and_server_lives_on(
        client: Client, provider: StaticProvider) -> None:
    provider.fail = ConnectionError(f"rpc {EVIL}")
    resp = await client.get("/")
    assert resp.status == 503
    html = await resp.text()
    assert "<script" not in html
    assert "ConnectionError: rpc &lt;script&gt;" in html
    resp = await client.get("/api/snapshot")
    assert resp.status == 503
    assert await resp.json() == {"ok": False, "error": f"ConnectionError: rpc {EVIL}"}
    assert (await client.get("/metrics")).status == 503
    provider.fail = None
    assert (await client.get("/")).status == 200
    assert (await client.get("/metrics")).status == 200


async def test_rendering_bug_gives_500_json(client: Client,
                                            provider: StaticProvider) -> None:
    provider.snap = {"schema": 1}  # type: ignore[typeddict-item]
    resp = await client.get("/")
    assert resp.status == 500
    assert (await resp.json())["ok"] is False
    assert (await client.get("/healthz")).status == 200


async def test_empty_snapshot_renders(client: Client, provider: StaticProvider) -> None:
    provider.snap = Snapshot(schema=1, run="r", generated_at=0.0, chain=None, nodes=[])
    resp = await client.get("/")
    assert resp.status == 200
    html = await resp.text()
    assert "no data" in html
    assert "chain not readable" in html
    assert sum(count_points(html).values()) == 0
    metrics = await (await client.get("/metrics")).text()
    assert "gradmesh_chain_block" not in metrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_parse(client: Client, provider: StaticProvider) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples = _samples(await resp.text())
    node = provider.snap["nodes"][0]
    assert samples[("gradmesh_window", (("node", "miner-0"),))] == node["window"]
    assert samples[("gradmesh_peers", (("node", "miner-0"),))] == node["peers"]
    loss = node["history"][-1]["heldout_loss"]
    assert samples[("gradmesh_heldout_loss", (("node", "miner-0"),))] == pytest.approx(loss)
    assert samples[("gradmesh_mesh_bytes_total",
                    (("direction", "out"), ("node", "miner-0")))] == node["bytes_out"]
    assert samples[("gradmesh_mesh_bytes_total",
                    (("direction", "in"), ("node", EVIL_NAME)))] > 0
    chain = provider.snap["chain"]
    assert chain is not None
    assert samples[("gradmesh_chain_block", ())] == chain["block"]
    assert samples[("gradmesh_chain_epoch", ())] == chain["epoch"]
    row = chain["balances"][2]
    assert samples[("gradmesh_stake_wei", (("address", row["address"]),))] == row["stake_wei"]
    assert samples[("gradmesh_claimable_wei",
                    (("address", row["address"]),))] == row["claimable_wei"]
    assert samples[("gradmesh_validator_score",
                    (("uid", "1"), ("validator", "validator-0")))] == pytest.approx(0.2)


async def test_metrics_follow_the_latest_snapshot(client: Client,
                                                  provider: StaticProvider) -> None:
    await client.get("/metrics")
    provider.snap = sample_snapshot(windows=11)
    samples = _samples(await (await client.get("/metrics")).text())
    assert samples[("gradmesh_window", (("node", "miner-1"),))] == 11


async def test_two_apps_have_separate_registries() -> None:
    a = StaticProvider(sample_snapshot(run="a", windows=2))
    b = StaticProvider(sample_snapshot(run="b", windows=9))
    async with TestClient(TestServer(make_app(a), host="127.0.0.1")) as ca, \
            TestClient(TestServer(make_app(b), host="127.0.0.1")) as cb:
        sa = _samples(await (await ca.get("/metrics")).text())
        sb = _samples(await (await cb.get("/metrics")).text())
    assert sa[("gradmesh_window", (("node", "miner-0"),))] == 2
    assert sb[("gradmesh_window", (("node", "miner-0"),))] == 9
