"""The `Gatherer` (node/runtime/gather.py) over the in-memory mesh.

Negative checks ("X was ignored") are made safe by a marker: announcements reach the
gatherer in order, so once a later, wanted marker is being fetched every earlier
announcement has been judged.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from node.mesh.base import DEFAULT_MAX_BLOB_BYTES, Announcement, sha256
from node.mesh.memory import MemoryMesh, MemoryNetwork
from node.runtime.gather import Gatherer
from tests.support.keys import identity
from tests.support.mesh import wait_until

RUN = "gather-run"


class Rig:
    """One gathering node ("me") and three peers on an in-memory network.

    Peers 0 and 1 are allowed (registered); peer 2 is not, until a test allows it.
    """

    def __init__(self, *, latency: float = 0.0, window: int = 5, horizon: int = 2,
                 max_bytes: int = 1 << 20, fetch_timeout: float = 5.0, concurrency: int = 8,
                 mesh_cap: int = DEFAULT_MAX_BLOB_BYTES, retries: int = 2,
                 refresh: Callable[[Rig], Awaitable[None]] | None = None) -> None:
        self.net = MemoryNetwork(latency=latency)
        self.me: MemoryMesh = self.net.node(identity(1), RUN, max_blob_bytes=mesh_cap)
        self.peers: list[MemoryMesh] = [self.net.node(identity(n), RUN) for n in (2, 3, 4)]
        self.allowed = {self.peers[0].address, self.peers[1].address}
        self.window = window
        self.refreshes = 0
        self._refresh = refresh
        ticks = itertools.count(1000)
        self.gatherer = Gatherer(
            self.me, RUN, allowed=lambda a: a in self.allowed,
            current_window=lambda: self.window, max_bytes=max_bytes,
            clock=lambda: float(next(ticks)), fetch_timeout=fetch_timeout,
            concurrency=concurrency, horizon=horizon, refresh=self._on_refresh,
            retries=retries, retry_backoff=0.05)
        self.task: asyncio.Task[None] | None = None

    async def _on_refresh(self) -> None:
        self.refreshes += 1
        if self._refresh is not None:
            await self._refresh(self)

    async def start(self) -> None:
        for mesh in (self.me, *self.peers):
            await mesh.start()
        self.task = asyncio.create_task(self.gatherer.run())
        # subscribed: from here on no announcement is missed
        await self.until(lambda: len(self.me._subs) == 1, "the gatherer to subscribe")

    def alive(self) -> None:
        assert self.task is not None
        if self.task.done():
            raise AssertionError(f"the gatherer stopped: {self.task.exception()!r}")

    async def until(self, cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        """Poll `cond` with a deadline, failing at once if the gatherer died."""

        def check() -> bool:
            self.alive()
            return cond()

        await wait_until(check, timeout=timeout, what=what)

    async def marker(self, window: int | None = None) -> bytes:
        """Announce a wanted blob from peer 0 and wait until it has been fetched."""
        w = self.window if window is None else window
        blob = b"marker-" + os.urandom(16)
        await self.peers[0].announce(w, blob)
        await self.until(lambda: blob in self.gatherer.envelopes(w), "the marker")
        return blob

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for mesh in (self.me, *self.peers):
            await mesh.stop()


@pytest.fixture
async def rig() -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    made: list[Rig] = []

    async def make(**options: Any) -> Rig:
        r = Rig(**options)
        made.append(r)
        await r.start()
        return r

    try:
        yield make
    finally:
        for r in made:
            await r.close()


async def test_allowed_announcements_for_the_window_are_fetched_in_order(rig: Any) -> None:
    r = await rig()
    a, b = r.peers[0], r.peers[1]
    first, second = os.urandom(3000), os.urandom(5000)
    await a.announce(5, first)
    await b.announce(5, second)
    await r.until(lambda: len(r.gatherer.envelopes(5)) == 2, "both envelopes")
    assert r.gatherer.envelopes(5) == [first, second]
    got = r.gatherer.received(5)
    assert [x.order for x in got] == [0, 1]
    assert got[0].at < got[1].at  # this node's clock, when it first heard each
    assert r.gatherer.pending(5) == 0
    assert r.gatherer.envelopes(4) == []
    assert r.gatherer.envelopes(6) == []
    # the same blob announced again, or by another announcer, is not fetched twice
    await a.announce(5, first)
    await b.announce(5, first)
    await r.marker()
    assert r.gatherer.envelopes(5)[:2] == [first, second]
    assert len(r.gatherer.envelopes(5)) == 3
    assert r.me.stats().blobs_fetched == 3  # first, second, the marker
    assert r.refreshes == 0  # allowed announcers never trigger a refresh
    r.alive()


async def test_announcer_not_allowed_is_ignored_after_a_refresh(rig: Any) -> None:
    r = await rig()
    stranger = r.peers[2]
    blob = os.urandom(2000)
    await stranger.announce(5, blob)
    marker = await r.marker()
    assert r.refreshes == 1
    assert r.gatherer.envelopes(5) == [marker]
    assert stranger.stats().blobs_served == 0, "a stranger's blob must not be downloaded"


async def test_a_refresh_that_registers_the_announcer_lets_it_through(rig: Any) -> None:
    async def register(r: Rig) -> None:
        r.allowed.add(r.peers[2].address)

    r = await rig(refresh=register)
    blob = os.urandom(2000)
    await r.peers[2].announce(5, blob)
    await r.until(lambda: r.gatherer.envelopes(5) == [blob], "the newcomer's envelope")
    assert r.refreshes == 1
    assert r.peers[2].stats().blobs_served == 1


async def test_windows_outside_the_horizon_are_ignored(rig: Any) -> None:
    r = await rig(window=10, horizon=2)
    a = r.peers[0]
    blobs = {w: f"window {w} ".encode() + os.urandom(64) for w in (7, 8, 12, 13)}
    for w, blob in blobs.items():
        await a.announce(w, blob)
    await r.marker(10)
    await r.until(lambda: all(r.gatherer.envelopes(w) for w in (8, 12)), "windows 8 and 12")
    assert r.gatherer.envelopes(8) == [blobs[8]]
    assert r.gatherer.envelopes(12) == [blobs[12]]
    for w in (7, 13):
        assert r.gatherer.envelopes(w) == [], w
        assert r.gatherer.pending(w) == 0, w
    assert a.stats().blobs_served == 3  # 8, 12 and the marker
    # the current window is read at each announcement: once it moves on, 13 is near
    r.window = 11
    await a.announce(13, blobs[13])
    await r.until(lambda: r.gatherer.envelopes(13) == [blobs[13]], "window 13 once near")
    assert r.refreshes == 0


async def test_oversize_announcements_are_not_fetched(rig: Any) -> None:
    r = await rig(max_bytes=1000)
    big, small = os.urandom(1001), os.urandom(1000)
    await r.peers[0].announce(5, big)
    await r.peers[1].announce(5, small)
    await r.until(lambda: r.gatherer.envelopes(5) == [small], "the small envelope")
    assert r.gatherer.pending(5) == 0
    assert r.peers[0].stats().blobs_served == 0, "an oversize blob must not be downloaded"


def test_wanted_explains_each_refusal() -> None:
    r = Rig(window=5, horizon=1, max_bytes=100)
    ok_peer, stranger = identity(2), identity(4)

    def ann(who: Any = ok_peer, **fields: Any) -> Announcement:
        values: dict[str, Any] = {"run": RUN, "window": 5, "blob_sha256": sha256(b"x"),
                                  "size": 100, "peer_id": "p", "addrs": ()}
        values.update(fields)
        return Announcement.create(who, **values)

    assert r.gatherer.wanted(ann()) is None
    assert r.gatherer.wanted(ann(run="another-run")) == "other run"
    assert r.gatherer.wanted(ann(window=7)) == "window out of range"
    assert r.gatherer.wanted(ann(window=3)) == "window out of range"
    assert r.gatherer.wanted(ann(size=101)) == "too large"
    assert r.gatherer.wanted(ann(stranger)) == "announcer not registered"
    r.gatherer.add_own(5, b"x", sha256(b"x"))
    assert r.gatherer.wanted(ann()) == "already have it"
    # a stranger serving a hash we hold (a swarming re-announcement) costs no refresh
    assert r.gatherer.wanted(ann(stranger)) == "already have it"


async def test_settle_waits_for_in_flight_fetches_within_the_grace(rig: Any) -> None:
    r = await rig(latency=0.5)
    blob = os.urandom(4000)
    await r.peers[0].announce(5, blob)
    await r.until(lambda: r.gatherer.pending(5) == 1, "the fetch to start")
    assert r.gatherer.envelopes(5) == []
    started = time.monotonic()
    await r.gatherer.settle(5, 10.0)
    elapsed = time.monotonic() - started
    assert r.gatherer.envelopes(5) == [blob]
    assert r.gatherer.pending(5) == 0
    assert elapsed < 5.0, "settle must return when the fetches end, not at the grace"
    started = time.monotonic()
    await r.gatherer.settle(5, 10.0)  # nothing pending: at once
    await r.gatherer.settle(99, 10.0)  # a window nobody announced: at once
    assert time.monotonic() - started < 1.0


async def test_settle_gives_up_after_the_grace_on_a_stalled_fetch(rig: Any) -> None:
    r = await rig(fetch_timeout=60.0)
    r.net.set_fault(r.peers[0].peer_id, "stall")
    await r.peers[0].announce(5, os.urandom(100))
    await r.until(lambda: r.gatherer.pending(5) == 1, "the fetch to start")
    started = time.monotonic()
    await r.gatherer.settle(5, 0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2.0
    assert r.gatherer.pending(5) == 1
    assert r.gatherer.envelopes(5) == []
    # another window's stalled fetch does not hold up settling this one
    blob = os.urandom(100)
    await r.peers[1].announce(6, blob)
    await r.until(lambda: bool(r.gatherer.pending(6) or r.gatherer.envelopes(6)),
                  "window 6's announcement to be taken up")
    started = time.monotonic()
    await r.gatherer.settle(6, 10.0)
    assert time.monotonic() - started < 5.0
    assert r.gatherer.envelopes(6) == [blob]
    r.alive()


async def test_add_own_counts_as_received_and_is_not_fetched(rig: Any) -> None:
    r = await rig()
    own = os.urandom(500)
    r.gatherer.add_own(5, own, sha256(own))
    assert r.gatherer.envelopes(5) == [own]
    assert r.gatherer.received(5)[0].order == 0
    # a peer announcing the very same bytes is not fetched: we have them
    await r.peers[1].announce(5, own)
    other = os.urandom(600)
    await r.peers[0].announce(5, other)
    await r.until(lambda: len(r.gatherer.envelopes(5)) == 2, "the peer's envelope")
    assert r.gatherer.envelopes(5) == [own, other]
    assert r.peers[1].stats().blobs_served == 0
    # adding the same bytes again keeps the time they were first had
    first_at = r.gatherer.received(5)[0].at
    r.gatherer.add_own(5, own, sha256(own))
    assert r.gatherer.received(5)[0].at == first_at
    assert r.gatherer.envelopes(5) == [own, other]


async def test_forget_drops_older_windows_only(rig: Any) -> None:
    r = await rig(window=5, horizon=2)
    blobs = {w: os.urandom(100) for w in (4, 5, 6)}
    for w, blob in blobs.items():
        await r.peers[0].announce(w, blob)
    await r.until(lambda: all(r.gatherer.envelopes(w) for w in blobs), "three windows")
    r.gatherer.add_own(3, b"mine", sha256(b"mine"))
    r.gatherer.forget(5)
    assert r.gatherer.envelopes(3) == []
    assert r.gatherer.envelopes(4) == []
    assert r.gatherer.received(4) == []
    assert r.gatherer.pending(4) == 0
    assert r.gatherer.envelopes(5) == [blobs[5]]
    assert r.gatherer.envelopes(6) == [blobs[6]]
    # a forgotten window starts from nothing if it is announced again
    await r.peers[0].announce(4, blobs[4])
    await r.until(lambda: r.gatherer.envelopes(4) == [blobs[4]], "window 4 again")


@pytest.mark.parametrize("fault", ["refuse", "corrupt", "stall"])
async def test_a_failing_fetch_does_not_crash_the_gatherer(rig: Any, fault: str) -> None:
    r = await rig(fetch_timeout=0.3)
    bad = r.peers[0]
    r.net.set_fault(bad.peer_id, fault)
    blob = os.urandom(300)
    await bad.announce(5, blob)
    sha = sha256(blob)

    def failed() -> bool:
        w = r.gatherer._windows.get(5)
        return w is not None and sha in w.failed

    await r.until(failed, "the fetch to fail")
    assert r.gatherer.pending(5) == 0
    assert r.gatherer.envelopes(5) == []
    # still gathering: another peer's envelope arrives
    good = os.urandom(300)
    await r.peers[1].announce(5, good)
    await r.until(lambda: r.gatherer.envelopes(5) == [good], "a good envelope after it")
    # a failed hash is not poisoned: announced again by a healthy source, it is fetched
    r.net.set_fault(bad.peer_id, None)
    await bad.announce(5, blob)
    await r.until(lambda: blob in r.gatherer.envelopes(5), "the blob once served")
    assert r.gatherer.envelopes(5) == [blob, good]  # by when it was first heard of
    r.alive()


async def test_a_fetch_refused_by_the_mesh_itself_does_not_crash_the_gatherer(
        rig: Any) -> None:
    r = await rig(max_bytes=1 << 20, mesh_cap=1000)
    await r.peers[0].announce(5, os.urandom(2000))
    await r.marker()  # fails at once if the gatherer died
    r.alive()


async def test_a_failed_fetch_is_tried_again_without_a_new_announcement(rig: Any) -> None:
    r = await rig(fetch_timeout=0.3, retries=3)
    flaky = r.peers[0]
    r.net.set_fault(flaky.peer_id, "refuse")
    fetches = []
    real_fetch = r.me.fetch

    async def fetch(target: Any, *, timeout: float) -> bytes:
        fetches.append(target.sha256)
        if len(fetches) == 3:
            r.net.set_fault(flaky.peer_id, None)  # the source is back for the third try
        return await real_fetch(target, timeout=timeout)

    r.me.fetch = fetch  # type: ignore[method-assign]
    blob = os.urandom(300)
    await flaky.announce(5, blob)
    await r.until(lambda: r.gatherer.envelopes(5) == [blob], "the retried fetch")
    assert fetches == [sha256(blob)] * 3
    assert sha256(blob) not in r.gatherer._windows[5].failed


async def test_retries_stop_once_the_window_is_past(rig: Any) -> None:
    r = await rig(fetch_timeout=0.3, retries=5)
    r.net.set_fault(r.peers[0].peer_id, "refuse")
    fetches = []
    real_fetch = r.me.fetch

    async def fetch(target: Any, *, timeout: float) -> bytes:
        fetches.append(target.sha256)
        r.window = 9  # window 5 leaves the horizon while the first fetch runs
        return await real_fetch(target, timeout=timeout)

    r.me.fetch = fetch  # type: ignore[method-assign]
    blob = os.urandom(300)
    await r.peers[0].announce(5, blob)

    def gave_up() -> bool:
        w = r.gatherer._windows.get(5)
        return w is not None and sha256(blob) in w.failed

    await r.until(gave_up, "the give-up")
    assert len(fetches) == 1
