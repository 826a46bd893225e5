"""Collects a window's contributions from the mesh as announcements arrive.

One background task per node subscribes to announcements, fetches each
announced envelope (bounded concurrency, per-fetch timeout, a failed fetch tried
again with backoff) and files it by window with the time *this* node first heard
of it. Only announcers the
caller allows (registered miners) are fetched, and only for windows near the
current one, so strangers cannot make a node download at will.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from node.mesh.base import Announcement, Mesh
from node.mesh.errors import BlobTooLargeError, FetchError, MeshError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    data: bytes
    at: float  # when this node first saw the announcement (its own clock)
    order: int  # 0 = first announcement seen for the window


@dataclass
class _Window:
    seen: dict[bytes, float] = field(default_factory=dict)  # sha256 -> first seen
    data: dict[bytes, bytes] = field(default_factory=dict)
    pending: set[bytes] = field(default_factory=set)
    failed: dict[bytes, str] = field(default_factory=dict)


class Gatherer:
    def __init__(self, mesh: Mesh, run: str, *, allowed: Callable[[bytes], bool],
                 current_window: Callable[[], int], max_bytes: int,
                 clock: Callable[[], float] = time.time, fetch_timeout: float = 20.0,
                 concurrency: int = 8, horizon: int = 2,
                 refresh: Callable[[], Awaitable[None]] | None = None,
                 retries: int = 2, retry_backoff: float = 1.0) -> None:
        self.mesh = mesh
        self.run_id = run
        self.allowed = allowed
        self.current_window = current_window
        self.max_bytes = max_bytes
        self.clock = clock
        self.fetch_timeout = fetch_timeout
        self.horizon = horizon  # accept announcements for current ± horizon windows
        self.refresh = refresh  # re-reads the registered set (a newcomer's first window)
        self.retries = retries  # a failed fetch is tried again this often ...
        self.retry_backoff = retry_backoff  # ... after this many seconds, doubling
        self._windows: dict[int, _Window] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._changed = asyncio.Event()

    def _window(self, window: int) -> _Window:
        return self._windows.setdefault(window, _Window())

    def add_own(self, window: int, data: bytes, sha256: bytes) -> None:
        w = self._window(window)
        w.seen.setdefault(sha256, self.clock())
        w.data[sha256] = data
        self._changed.set()

    def wanted(self, ann: Announcement) -> str | None:
        """Why an announcement is ignored (None: fetch it)."""
        if ann.run != self.run_id:
            return "other run"
        if abs(ann.window - self.current_window()) > self.horizon:
            return "window out of range"
        if ann.size > self.max_bytes:
            return "too large"
        # before the registry: with swarming every fetcher re-announces what it serves,
        # and a known hash must not cost a registry refresh
        w = self._windows.get(ann.window)
        if w is not None and (ann.sha256 in w.data or ann.sha256 in w.pending):
            return "already have it"
        if not self.allowed(ann.announcer):
            return "announcer not registered"
        return None

    async def run(self) -> None:
        """Until cancelled: fetch every wanted announcement."""
        sub = self.mesh.subscribe()
        try:
            async with asyncio.TaskGroup() as tg:
                async for ann in sub:
                    why = self.wanted(ann)
                    if why == "announcer not registered" and self.refresh is not None:
                        await self.refresh()  # it may have registered since we last looked
                        why = self.wanted(ann)
                    if why is not None:
                        log.debug("ignoring announcement from 0x%s: %s",
                                  ann.announcer.hex(), why)
                        continue
                    w = self._window(ann.window)
                    w.seen.setdefault(ann.sha256, self.clock())
                    w.pending.add(ann.sha256)
                    tg.create_task(self._fetch(ann, w))
        finally:
            sub.close()

    async def _fetch(self, ann: Announcement, w: _Window) -> None:
        try:
            w.data[ann.sha256] = await self._fetch_with_retries(ann)
        except MeshError as exc:  # any refusal of the mesh: this envelope only, never the loop
            w.failed[ann.sha256] = f"{type(exc).__name__}: {exc}"
            log.info("window %d: fetch from 0x%s failed: %s", ann.window, ann.announcer.hex(),
                     exc)
        finally:
            w.pending.discard(ann.sha256)
            self._changed.set()

    async def _fetch_with_retries(self, ann: Announcement) -> bytes:
        """The mesh's fetch, tried again after a backoff while the window is still near:
        one reset stream must not lose an envelope, or validators would count its miner
        as missing. A blob over the mesh's cap is not retried."""
        for attempt in range(self.retries + 1):
            try:
                async with self._slots:
                    return await self.mesh.fetch(ann, timeout=self.fetch_timeout)
            except BlobTooLargeError:
                raise
            except FetchError as exc:
                near = abs(ann.window - self.current_window()) <= self.horizon
                if attempt == self.retries or not near:
                    raise
                log.info("window %d: fetch from 0x%s failed (%s); trying again",
                         ann.window, ann.announcer.hex(), exc)
            await asyncio.sleep(self.retry_backoff * 2**attempt)
        raise AssertionError("unreachable")

    def received(self, window: int) -> list[Received]:
        """Fetched envelopes of `window`, in the order their announcements arrived."""
        w = self._windows.get(window)
        if w is None:
            return []
        ordered = sorted((t, sha) for sha, t in w.seen.items() if sha in w.data)
        return [Received(w.data[sha], t, i) for i, (t, sha) in enumerate(ordered)]

    def envelopes(self, window: int) -> list[bytes]:
        return [r.data for r in self.received(window)]

    def pending(self, window: int) -> int:
        w = self._windows.get(window)
        return len(w.pending) if w else 0

    async def settle(self, window: int, timeout: float) -> None:
        """Wait until nothing announced for `window` is still being fetched (or timeout)."""
        deadline = time.monotonic() + timeout
        while self.pending(window) and time.monotonic() < deadline:
            self._changed.clear()
            remaining = deadline - time.monotonic()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=max(0.0, remaining))
            except TimeoutError:
                break

    def forget(self, before_window: int) -> None:
        for window in [w for w in self._windows if w < before_window]:
            del self._windows[window]
