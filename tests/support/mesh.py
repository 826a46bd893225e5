"""Helpers for mesh tests: build started clusters of either implementation, poll conditions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from node.mesh import Announcement, MemoryNetwork
from tests.support.keys import identity


async def wait_until(cond: Callable[[], bool], *, timeout: float, what: str = "condition",
                     interval: float = 0.02) -> None:
    """Poll `cond` until it holds; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Cluster:
    """N started meshes of one kind; p2p nodes all bootstrap from node 0."""

    def __init__(self, kind: str, run: str = "test-run") -> None:
        self.kind = kind
        self.run = run
        self.nodes: list[Any] = []
        self.network = MemoryNetwork()
        self._next_key = 100

    async def add(self, n: int = 1, **config: Any) -> list[Any]:
        added = []
        for _ in range(n):
            ident = identity(self._next_key)
            self._next_key += 1
            mesh: Any
            if self.kind == "memory":
                mesh = self.network.node(ident, self.run)
            else:
                from node.mesh.p2p import P2PConfig, P2PMesh

                boot = self.nodes[0].dial_addrs if self.nodes else ()
                mesh = P2PMesh(ident, P2PConfig(run=self.run, bootstrap=boot, **config))
            await mesh.start()
            self.nodes.append(mesh)
            added.append(mesh)
        if self.kind != "memory" and len(self.nodes) > 1:
            # every node knows node 0 at least; wait until gossip can reach everyone
            first = self.nodes[0]
            await wait_until(lambda: len(first.connected_peers()) >= len(self.nodes) - 1,
                             timeout=20, what="all peers connected to the bootstrap node")
        return added

    async def close(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes), return_exceptions=True)


class Collector:
    """Collects a mesh's announcements in the background."""

    def __init__(self, mesh: Any) -> None:
        self.seen: list[Announcement] = []
        self._task = asyncio.get_running_loop().create_task(self._run(mesh.subscribe()))

    async def _run(self, sub: Any) -> None:
        async for ann in sub:
            self.seen.append(ann)

    def has(self, sha: bytes, peer_id: str | None = None) -> bool:
        return any(a.sha256 == sha and (peer_id is None or a.peer_id == peer_id)
                   for a in self.seen)

    def cancel(self) -> None:
        self._task.cancel()


async def announce_until_seen(announcer: Any, collectors: list[Collector], window: int,
                              blob: bytes, *, timeout: float = 20.0) -> Announcement:
    """Announce (repeating, since gossip meshes form asynchronously) until all collectors saw it."""
    deadline = time.monotonic() + timeout
    while True:
        ann: Announcement = await announcer.announce(window, blob)
        sha, peer = ann.sha256, ann.peer_id

        def seen(sha: bytes = sha, peer: str = peer) -> bool:
            return all(c.has(sha, peer) for c in collectors)

        try:
            await wait_until(seen,
                             timeout=min(1.0, max(0.05, deadline - time.monotonic())),
                             what="announcement delivery")
            return ann
        except AssertionError:
            if time.monotonic() > deadline:
                raise
