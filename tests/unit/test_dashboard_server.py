"""start_server / stop_server on a real loopback port."""

from __future__ import annotations

import aiohttp
import pytest
from yarl import URL

from node.dashboard import make_app, start_server, stop_server
from node.dashboard.sample import StaticProvider, sample_snapshot


async def test_port_zero_binds_loopback_and_reports_the_real_port() -> None:
    runner, url = await start_server(make_app(StaticProvider(sample_snapshot())))
    try:
        parsed = URL(url)
        assert parsed.host == "127.0.0.1"
        assert parsed.port not in (None, 0)
        async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["ok"] is True
    finally:
        await stop_server(runner)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url + "/healthz")


async def test_a_taken_port_raises_and_cleans_up() -> None:
    runner, url = await start_server(make_app(StaticProvider(sample_snapshot())))
    try:
        port = URL(url).port
        assert port is not None
        with pytest.raises(OSError, match=r"(?i)address already in use"):
            await start_server(make_app(StaticProvider(sample_snapshot())), port=port)
    finally:
        await stop_server(runner)
