"""Announcements for `P2PMesh` (a mixin): gossip in, gossip out.

Incoming gossip is checked before it spreads (`_validate_gossip`: it decodes, names
this run, and is bound to its gossip source: the peer id is the source's, and the
source's key is the announcer's address); accepted announcements are remembered as
sources of their blob (with the addresses the policy allows) and delivered to the
asyncio side's subscribers. Outgoing: `announce` (a blob this node authored, with its
pieces' root) and `_announce_serving` (a blob whose pieces this node now serves).
Must never: deliver an announcement whose binding failed, or one of another run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import multiaddr
from libp2p.peer.id import ID

from node.mesh.base import Announcement, BlobStore, Subscription, broadcast
from node.mesh.errors import BadAnnouncementError, BlobTooLargeError, MeshStateError
from node.mesh.p2p_config import P2PConfig
from node.mesh.p2p_host import peer_address
from node.mesh.pieces import piece_hashes, pieces_root
from protocol.identity import Identity


class Announcements:
    """The gossip half of `P2PMesh`; the attributes below are the mesh's."""

    _cfg: P2PConfig
    _identity: Identity
    _blobs: BlobStore
    _lists: dict[bytes, bytes]
    _sources: dict[bytes, dict[str, Announcement]]
    _circuits: dict[str, list[str]]
    _subs: list[asyncio.Queue[Announcement | None]]
    _loop: asyncio.AbstractEventLoop | None
    _running: bool
    _host: Any
    _pubsub: Any
    _topic: str
    _call: Callable[..., Awaitable[Any]]

    if TYPE_CHECKING:  # the mesh's own (node/mesh/p2p.py)
        @property
        def peer_id(self) -> str: ...

        @property
        def address(self) -> bytes: ...

        @property
        def advertised_addrs(self) -> tuple[str, ...]: ...

    def _validate_gossip(self, msg_forwarder: ID, msg: Any) -> bool:
        try:
            ann = Announcement.decode(msg.data)
            self._check_binding(ann, ID(msg.from_id))
        except (BadAnnouncementError, ValueError):
            return False
        return ann.run == self._cfg.run

    def _check_binding(self, ann: Announcement, source: ID) -> None:
        if ann.peer_id != source.to_base58():
            raise BadAnnouncementError("announcement peer id is not its gossip source")
        if peer_address(source) != ann.announcer:
            raise BadAnnouncementError("peer id key does not match the announcer address")

    async def _pump_announcements(self, sub: Any) -> None:
        while True:
            msg = await sub.get()
            try:
                ann = Announcement.decode(msg.data)
                self._check_binding(ann, ID(msg.from_id))
            except (BadAnnouncementError, ValueError):
                continue
            if ann.announcer == self.address or ann.run != self._cfg.run:
                continue
            self._remember(ann)
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._deliver, ann)

    def _remember(self, ann: Announcement) -> None:
        self._sources[ann.sha256][ann.peer_id] = ann
        allowed = self._cfg.policy.filter(ann.addrs)
        circuits = [f"{a}/p2p/{ann.peer_id}" for a in allowed
                    if a.endswith("/p2p-circuit") and "/p2p/" in a]
        if circuits:
            self._circuits[ann.peer_id] = circuits
        addrs = [multiaddr.Multiaddr(a) for a in allowed if "/p2p-circuit" not in a]
        if addrs:
            with contextlib.suppress(Exception):
                self._host.get_peerstore().add_addrs(ID.from_base58(ann.peer_id), addrs, 3600)

    def _deliver(self, ann: Announcement) -> None:
        broadcast(self._subs, ann)

    async def announce(self, window: int, blob: bytes) -> Announcement:
        if not self._running:
            raise MeshStateError("mesh is not running")
        if len(blob) > self._cfg.max_blob_bytes:
            raise BlobTooLargeError(f"blob of {len(blob)} bytes exceeds {self._cfg.max_blob_bytes}")
        digest = self._blobs.add(window, blob)
        hashes = piece_hashes(blob)
        self._lists[digest] = b"".join(hashes)
        ann = Announcement.create(self._identity, run=self._cfg.run, window=window,
                                  blob_sha256=digest, size=len(blob), peer_id=self.peer_id,
                                  addrs=self.advertised_addrs, pieces=pieces_root(hashes))
        await self._call(self._pubsub.publish, self._topic, ann.encode(), timeout=10.0)
        return ann

    async def _announce_serving(self, ann: Announcement) -> None:
        """Gossip (trio side) that this node serves the pieces of `ann`'s blob."""
        own = Announcement.create(self._identity, run=ann.run, window=ann.window,
                                  blob_sha256=ann.sha256, size=ann.size, peer_id=self.peer_id,
                                  addrs=self.advertised_addrs, pieces=ann.pieces)
        await self._pubsub.publish(self._topic, own.encode())

    def subscribe(self) -> Subscription:
        if not self._running:
            raise MeshStateError("mesh is not running")
        return Subscription(self._subs)
