"""Polls the nodes' own `/api/snapshot` endpoints and merges them into one snapshot.

Every answer is untrusted: size-capped while it is read, parsed, and checked
against `node.status` before any of it reaches the page. A node that fails in
any way becomes a NodeSnapshot in state "unreachable" (its last good data kept,
so charts do not blank out on one missed poll); `snapshot()` itself never
raises for a node's sake.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import numpy as np
from yarl import URL

from node.dashboard.errors import (
    MalformedSnapshot,
    NodeUnreachable,
    RemoteNodeError,
    ResponseTooLarge,
    SchemaMismatch,
)
from node.dashboard.validate import check_snapshot
from node.status import SCHEMA, ChainSnapshot, NodeSnapshot, Snapshot, TimelineEvent

ChainReader = Callable[[], Awaitable[ChainSnapshot | None]]
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


MAX_JSON_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a JSON string literal


def _shallow(body: bytes) -> bytes:
    """`body` if its arrays/objects nest at most MAX_JSON_DEPTH deep, else ValueError.

    json's C parser recurses once per level and web3's dependencies raise Python's
    recursion limit to 100000, so deep input from a hostile node would overflow the C
    stack (a segfault, not an exception) instead of raising RecursionError."""
    skeleton = np.frombuffer(_STRING.sub(b'""', body), dtype=np.uint8)
    steps = (np.isin(skeleton, _OPEN).astype(np.int32)
             - np.isin(skeleton, _CLOSE).astype(np.int32))
    if steps.size and int(np.cumsum(steps).max()) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    return body


_OPEN = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE = np.frombuffer(b"]}", dtype=np.uint8)


class HttpSnapshotProvider:
    """A `SnapshotProvider` over HTTP: one GET per node URL per `snapshot()` call
    (calls closer together than `min_interval` seconds share one poll)."""

    def __init__(self, node_urls: Sequence[str], chain_reader: ChainReader | None = None,
                 timeout: float = 3.0, *, max_bytes: int = MAX_RESPONSE_BYTES,
                 min_interval: float = 1.0) -> None:
        self.node_urls = [u.rstrip("/") for u in node_urls]
        self.chain_reader = chain_reader
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.min_interval = min_interval
        self._last_good: dict[str, list[NodeSnapshot]] = {}
        self._errors: dict[str, str] = {}
        self._cached: tuple[float, Snapshot] | None = None
        self._lock = asyncio.Lock()

    async def snapshot(self) -> Snapshot:
        async with self._lock:  # concurrent page loads share one poll of the nodes
            if self._cached and time.monotonic() - self._cached[0] < self.min_interval:
                return self._cached[1]
            snap = await self._poll()
            self._cached = (time.monotonic(), snap)
            return snap

    def health(self) -> tuple[bool, str]:
        if self._cached is None:
            return True, "no poll yet"
        up = len(self.node_urls) - len(self._errors)
        detail = "; ".join(f"{u}: {why}" for u, why in self._errors.items())
        reason = f"{up}/{len(self.node_urls)} nodes reachable" + (f" ({detail})" if detail else "")
        return up > 0 or not self.node_urls, reason

    async def _poll(self) -> Snapshot:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        # a session per poll: nothing to close when the dashboard stops, and polls are seconds apart
        async with aiohttp.ClientSession(timeout=timeout) as session:
            results = await asyncio.gather(*(self._fetch(session, u) for u in self.node_urls))
        chain = await self._read_chain() if self.chain_reader else None
        nodes: list[NodeSnapshot] = []
        run = ""
        for url, result in zip(self.node_urls, results, strict=True):
            if isinstance(result, RemoteNodeError):
                self._errors[url] = result.reason
                nodes += self._unreachable(url, result.reason)
                continue
            self._errors.pop(url, None)
            self._last_good[url] = result["nodes"]
            nodes += result["nodes"]
            run = run or result["run"]
            if self.chain_reader is None and chain is None:
                chain = result["chain"]
        return Snapshot(schema=SCHEMA, run=run, generated_at=time.time(), chain=chain,
                        nodes=nodes)

    async def _fetch(self, session: aiohttp.ClientSession,
                     url: str) -> Snapshot | RemoteNodeError:
        try:
            body = await self._get(session, url + "/api/snapshot")
        except RemoteNodeError as exc:
            return exc
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # ValueError: aiohttp rejects some malformed URLs and headers with it
            why = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            return NodeUnreachable(url, why)
        try:
            return check_snapshot(json.loads(_shallow(body)))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            return MalformedSnapshot(url, f"not JSON ({type(exc).__name__})")
        except SchemaMismatch as exc:
            return MalformedSnapshot(url, str(exc))

    async def _get(self, session: aiohttp.ClientSession, url: str) -> bytes:
        async with session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise NodeUnreachable(url, f"HTTP {resp.status}")
            if (resp.content_length or 0) > self.max_bytes:
                raise ResponseTooLarge(url, f"Content-Length over {self.max_bytes} bytes")
            body = bytearray()
            # read in chunks: a lying or absent Content-Length must not make us buffer it all
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > self.max_bytes:
                    raise ResponseTooLarge(url, f"body over {self.max_bytes} bytes")
            return bytes(body)

    async def _read_chain(self) -> ChainSnapshot | None:
        assert self.chain_reader is not None
        try:
            return await asyncio.wait_for(self.chain_reader(), self.timeout)
        except Exception:  # the chain reader is the caller's code; a chain outage is not ours
            return None

    def _unreachable(self, url: str, reason: str) -> list[NodeSnapshot]:
        known = copy.deepcopy(self._last_good.get(url)) or [_placeholder(url)]
        for node in known:
            node["state"] = "unreachable"
            node["peers"] = 0
            event = TimelineEvent(t=time.time(), window=node["window"],
                                  event=f"unreachable: {reason}")
            node["timeline"] = [*node["timeline"][-49:], event]
        return known


def _placeholder(url: str) -> NodeSnapshot:
    """A node never heard from; named by host:port only (a URL may carry credentials)."""
    parsed = URL(url)
    name = f"{parsed.host}:{parsed.port}" if parsed.host else "unknown"
    return NodeSnapshot(name=name, role="miner", address="", peer_id="", state="unreachable",
                        window=0, peers=0, bytes_in=0, bytes_out=0, history=[], timeline=[],
                        scores=[])
