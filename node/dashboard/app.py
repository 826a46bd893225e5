"""The dashboard's aiohttp application: read-only GET routes over a `SnapshotProvider`.

    /               HTML page (server-rendered, inline SVG charts, meta refresh)
    /api/snapshot   the Snapshot as JSON
    /metrics        Prometheus text exposition
    /healthz        200 {"ok": true, ...} or 503 {"ok": false, ...}

A provider that raises never takes the server down: its error becomes a 503
with the reason, and any other failure in a handler a 500 JSON body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from node.dashboard.metrics import Metrics
from node.dashboard.page import CSS_HASH, render_error, render_page
from node.dashboard.provider import SnapshotProvider
from node.status import Snapshot

log = logging.getLogger(__name__)

PROVIDER = web.AppKey("provider", SnapshotProvider)
METRICS = web.AppKey("metrics", Metrics)
TITLE = web.AppKey("title", str)
REFRESH = web.AppKey("refresh", int)

# no script may run at all; the one stylesheet is allowed by its hash
CSP = (f"default-src 'none'; style-src '{CSS_HASH}'; img-src 'self' data:; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


async def _snapshot(request: web.Request) -> Snapshot | str:
    """The provider's snapshot, or the reason there is none (already logged)."""
    try:
        return await request.app[PROVIDER].snapshot()
    except Exception as exc:  # the provider is the caller's code; any failure is a 503
        log.warning("dashboard: snapshot failed: %s", _describe(exc))
        return _describe(exc)


async def index(request: web.Request) -> web.Response:
    title, refresh = request.app[TITLE], request.app[REFRESH]
    snap = await _snapshot(request)
    if isinstance(snap, str):
        return web.Response(text=render_error(snap, title=title, refresh_seconds=refresh),
                            status=503, content_type="text/html")
    html = render_page(snap, title=title, refresh_seconds=refresh)
    return web.Response(text=html, content_type="text/html")


async def api_snapshot(request: web.Request) -> web.Response:
    snap = await _snapshot(request)
    if isinstance(snap, str):
        return web.json_response({"ok": False, "error": snap}, status=503)
    return web.json_response(snap)


async def metrics(request: web.Request) -> web.Response:
    snap = await _snapshot(request)
    if isinstance(snap, str):
        return web.Response(text=f"snapshot unavailable: {snap}\n", status=503)
    body = request.app[METRICS].render(snap)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    try:
        ok, reason = request.app[PROVIDER].health()
    except Exception as exc:  # a health check that cannot answer is unhealthy, not a crash
        ok, reason = False, _describe(exc)
    return web.json_response({"ok": bool(ok), "reason": str(reason)}, status=200 if ok else 503)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:  # last resort: a rendering bug must not leak a traceback page
        log.exception("dashboard: %s failed", request.path)
        return web.json_response({"ok": False, "error": _describe(exc)}, status=500)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def make_app(provider: SnapshotProvider, *, title: str = "gradmesh",
             refresh_seconds: int = 5) -> web.Application:
    """The dashboard over `provider`; serve it with `node.dashboard.server.start_server`."""
    app = web.Application(middlewares=[_errors])
    app[PROVIDER] = provider
    app[METRICS] = Metrics()
    app[TITLE] = title
    app[REFRESH] = refresh_seconds
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", index)
    app.router.add_get("/api/snapshot", api_snapshot)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
