"""HttpSnapshotProvider against real aiohttp servers on 127.0.0.1 that answer well,
badly, hugely, slowly, or not at all."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from node.dashboard import HttpSnapshotProvider
from node.dashboard.sample import sample_snapshot
from node.status import ChainSnapshot, Snapshot

RELEASE = web.AppKey("release", asyncio.Event)
SNAPS = web.AppKey("snaps", dict)
FLAKY = web.AppKey("flaky", asyncio.Event)


def _named(run: str, prefix: str, windows: int = 4) -> Snapshot:
    snap = sample_snapshot(miners=2, validators=0, windows=windows, run=run)
    for node in snap["nodes"]:
        node["name"] = f"{prefix}-{node['name']}"
    return snap


async def _good(request: web.Request) -> web.Response:
    return web.json_response(request.app[SNAPS][request.match_info["which"]])


async def _malformed(request: web.Request) -> web.Response:
    snap = _named("bad", "bad")
    snap["nodes"][0]["peers"] = "many"  # type: ignore[typeddict-item]
    return web.json_response(snap)


async def _not_json(request: web.Request) -> web.Response:
    return web.Response(body=b"\xff<html>nope", content_type="application/json")


async def _deep(request: web.Request) -> web.Response:
    return web.Response(text="[" * 100_000 + "]" * 100_000, content_type="application/json")


async def _huge(request: web.Request) -> web.StreamResponse:
    # chunked, no Content-Length: the cap must hold while streaming
    resp = web.StreamResponse()
    await resp.prepare(request)
    for _ in range(64):
        await resp.write(b" " * 65536)
    await resp.write_eof()
    return resp


async def _huge_declared(request: web.Request) -> web.Response:
    return web.Response(body=b" " * (2 * 1024 * 1024), content_type="application/json")


async def _slow(request: web.Request) -> web.Response:
    await request.app[RELEASE].wait()  # released at teardown
    return web.json_response(_named("slow", "slow"))


async def _error(request: web.Request) -> web.Response:
    return web.json_response({"ok": False}, status=503)


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("http://example.invalid/api/snapshot")


async def _flaky(request: web.Request) -> web.Response:
    if request.app[FLAKY].is_set():
        return web.Response(text="{", content_type="application/json")
    return web.json_response(_named("flaky", "flaky"))


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    """A fake node farm: `<base>/<kind>/api/snapshot`."""
    app = web.Application()
    app[RELEASE] = asyncio.Event()
    app[FLAKY] = asyncio.Event()
    app[SNAPS] = {"a": _named("run-a", "a"), "b": _named("run-b", "b", windows=6)}
    for path, handler in (("/good/{which}", _good), ("/malformed", _malformed),
                          ("/notjson", _not_json), ("/deep", _deep), ("/huge", _huge),
                          ("/huge-declared", _huge_declared), ("/slow", _slow),
                          ("/error", _error), ("/redirect", _redirect), ("/flaky", _flaky)):
        app.router.add_get(path + "/api/snapshot", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        app[RELEASE].set()
        await server.close()


@pytest.fixture
def nodes(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_merges_nodes_and_takes_chain_from_first(nodes: str) -> None:
    provider = HttpSnapshotProvider([f"{nodes}/good/a", f"{nodes}/good/b/"])
    snap = await provider.snapshot()
    names = [n["name"] for n in snap["nodes"]]
    assert names == ["a-miner-0", "a-miner-1", "b-miner-0", "b-miner-1"]
    assert snap["run"] == "run-a"
    assert snap["chain"] is not None
    assert snap["chain"]["window"] == 4
    assert provider.health() == (True, "2/2 nodes reachable")


async def test_chain_reader_wins_and_its_failure_is_none(nodes: str) -> None:
    chain = sample_snapshot(windows=40)["chain"]

    async def reader() -> ChainSnapshot | None:
        return chain

    async def broken() -> ChainSnapshot | None:
        raise ConnectionError("rpc down")

    snap = await HttpSnapshotProvider([f"{nodes}/good/a"], chain_reader=reader).snapshot()
    assert snap["chain"] == chain
    snap = await HttpSnapshotProvider([f"{nodes}/good/a"], chain_reader=broken).snapshot()
    assert snap["chain"] is None


@pytest.mark.parametrize(("kind", "reason"), [
    ("malformed", "$.nodes[0].peers"),
    ("notjson", "not JSON"),
    ("deep", "not JSON"),
    ("huge", "body over"),
    ("huge-declared", "Content-Length over"),
    ("error", "HTTP 503"),
    ("redirect", "HTTP 302"),
])
async def test_bad_answers_become_unreachable_nodes(nodes: str, kind: str, reason: str) -> None:
    provider = HttpSnapshotProvider([f"{nodes}/good/a", f"{nodes}/{kind}"],
                                    max_bytes=1024 * 1024)
    snap = await provider.snapshot()
    assert [n["state"] for n in snap["nodes"]] == ["training", "training", "unreachable"]
    bad = snap["nodes"][2]
    assert bad["name"] == nodes.removeprefix("http://")
    assert reason in bad["timeline"][-1]["event"]
    ok, why = provider.health()
    assert ok
    assert why.startswith("1/2 nodes reachable")
    assert reason in why


async def test_refused_connection(nodes: str) -> None:
    provider = HttpSnapshotProvider([_closed_port_url()])
    snap = await provider.snapshot()
    assert snap["nodes"][0]["state"] == "unreachable"
    assert "ClientConnectorError" in snap["nodes"][0]["timeline"][-1]["event"]
    assert snap["chain"] is None
    assert provider.health()[0] is False


async def test_slow_node_times_out_without_holding_the_rest(nodes: str) -> None:
    provider = HttpSnapshotProvider([f"{nodes}/slow", f"{nodes}/good/b"], timeout=0.5)
    started = time.monotonic()
    snap = await provider.snapshot()
    assert time.monotonic() - started < 3.0
    assert [n["state"] for n in snap["nodes"]] == ["unreachable", "training", "training"]
    assert snap["nodes"][0]["timeline"][-1]["event"] == "unreachable: timed out"


async def test_a_node_that_goes_bad_keeps_its_last_data(server: TestServer,
                                                        nodes: str) -> None:
    provider = HttpSnapshotProvider([f"{nodes}/flaky"], min_interval=0.0)
    first = await provider.snapshot()
    server.app[FLAKY].set()
    second = await provider.snapshot()
    assert [n["name"] for n in second["nodes"]] == [n["name"] for n in first["nodes"]]
    assert all(n["state"] == "unreachable" and n["peers"] == 0 for n in second["nodes"])
    assert second["nodes"][0]["history"] == first["nodes"][0]["history"]
    assert first["nodes"][0]["state"] == "training"  # the earlier snapshot was not mutated
    assert len(second["nodes"][0]["timeline"]) == len(first["nodes"][0]["timeline"]) + 1
    server.app[FLAKY].clear()
    third = await provider.snapshot()
    assert all(n["state"] == "training" for n in third["nodes"])


async def test_polls_closer_than_min_interval_share_one_result(nodes: str) -> None:
    provider = HttpSnapshotProvider([f"{nodes}/good/a"], min_interval=60.0)
    first, second = await asyncio.gather(provider.snapshot(), provider.snapshot())
    assert first is second


async def test_no_nodes_is_an_empty_snapshot() -> None:
    snap = await HttpSnapshotProvider([]).snapshot()
    assert snap["nodes"] == []
    assert snap["chain"] is None


async def test_bad_url_is_unreachable_not_an_exception() -> None:
    snap = await HttpSnapshotProvider(["not a url"]).snapshot()
    assert snap["nodes"][0]["state"] == "unreachable"
    assert json.dumps(snap)  # still plain JSON


def test_deep_json_is_refused_before_the_parser_recurses() -> None:
    # web3's dependencies lift Python's recursion limit to 100000: json's C parser would
    # then overflow the C stack on this body (a segfault) instead of raising
    from node.dashboard.remote import MAX_JSON_DEPTH, _shallow

    with pytest.raises(ValueError, match="nested deeper"):
        _shallow(b"[" * 200_000 + b"]" * 200_000)
    ok = b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"", "b": ' + b"[" * (MAX_JSON_DEPTH - 1)
    assert _shallow(ok) == ok  # brackets inside strings do not count
