"""The operator dashboard: an HTML page, a JSON API and Prometheus metrics over snapshots.

Read-only: it renders `node.status` snapshots (its only import of ours) and
must never change a node, sign anything or reach the chain itself.

    provider = HttpSnapshotProvider(["http://127.0.0.1:9100"])
    runner, url = await start_server(make_app(provider), "127.0.0.1", 8080)
    ...
    await stop_server(runner)
"""

from node.dashboard.app import make_app
from node.dashboard.errors import DashboardError
from node.dashboard.provider import SnapshotProvider
from node.dashboard.remote import HttpSnapshotProvider
from node.dashboard.server import start_server, stop_server

__all__ = ["DashboardError", "HttpSnapshotProvider", "SnapshotProvider", "make_app",
           "start_server", "stop_server"]
