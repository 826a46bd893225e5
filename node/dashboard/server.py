"""Starting and stopping the dashboard on a TCP port (loopback unless told otherwise)."""

from __future__ import annotations

from aiohttp import web


async def start_server(app: web.Application, host: str = "127.0.0.1",
                       port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve `app`; returns the runner (for `stop_server`) and the URL actually bound
    (port 0 picks a free port and the URL names it)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{shown}:{bound_port}"


async def stop_server(runner: web.AppRunner) -> None:
    await runner.cleanup()
