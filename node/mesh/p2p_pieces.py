"""The `/gradmesh/piece/1` wire format and one swarm fetch's bookkeeping (imported only
by `node.mesh.p2p*`; no I/O here).

Request: the blob's 32-byte SHA-256 and a 4-byte big-endian index: a piece (0..n-1),
`LIST` (the pieces' SHA-256s, back to back) or `HAVE` (a bitfield of the pieces held,
MSB first). Response: one status byte (`p2p_blob`'s OK, NOT_FOUND, BUSY, REFUSED), a
4-byte length and that many bytes. `Partial` is a blob being gathered (checked piece
by piece against the signed hash list); `FetchJob` is what one fetch knows of who has
what and chooses next (node/mesh/pieces.py's policy).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from node.mesh.base import Announcement
from node.mesh.p2p_blob import PeerFault
from node.mesh.pieces import (
    IN_FLIGHT,
    MAX_IN_FLIGHT,
    MAX_UPLOAD_SLOTS,
    PER_SOURCE,
    PIPELINE_MIN_RATE,
    UPLOAD_SLOTS,
    fastest_first,
    piece_count,
    piece_span,
    pieces_root,
    rarest_wanted,
)

PIECE_PROTOCOL = "/gradmesh/piece/1"
LIST = 0xFFFFFFFF
HAVE = 0xFFFFFFFE
REQUEST_LEN = 36
HAVE_EVERY_S = 0.5
HAVE_PEERS = 16  # holders asked for their bitfield per round
PIECE_TIMEOUT_S = 30.0
# a holder shares its uplink among UPLOAD_SLOTS requests: demanding the whole-blob
# minimum (256 KiB/s) of each would call every holder below 16 Mbit/s of uplink too
# slow; 128 KiB/s a slot keeps 8 Mbit/s uplinks above it and still cuts off a drip
PIECE_MIN_RATE = 128 * 1024  # bytes/s, after the grace period
ATTEMPTS_PER_SOURCE = 3  # failures in a row (busy aside) before a source is dropped
GIVE_UP_S = 3.0  # nothing on its way and no source offering a wanted piece this long
HEADER_LEN = 5


# what a slot needs of the configured uplink rate: the fetchers' minimum, and a half
# more for what else shares the uplink (frame headers, the ACKs of the node's own
# downloads: at 2.5 Mbit/s up and 10 down the lab measured two slots of a bare
# `PIECE_MIN_RATE` each cut off 2-4 times a run)
SLOT_RATE = PIECE_MIN_RATE * 3 // 2


def upload_slots(upload_rate: float) -> int:
    """Piece requests a holder serves at once: `UPLOAD_SLOTS` on an unknown uplink (0),
    else as many as the declared uplink gives `SLOT_RATE` each, from 1 to
    `MAX_UPLOAD_SLOTS`. A slow uplink then answers BUSY to the requests it could not
    serve fast enough, instead of serving every one so slowly that its fetchers call
    it too slow."""
    if upload_rate <= 0:
        return UPLOAD_SLOTS
    return max(1, min(MAX_UPLOAD_SLOTS, int(upload_rate // SLOT_RATE)))


def fetch_slots(download_rate: float) -> int:
    """Piece requests a node keeps open at once over all its fetches: `IN_FLIGHT`
    when its downlink is unknown (0), else as many as the downlink gives `SLOT_RATE`
    each, from 1 to `MAX_IN_FLIGHT`. More requests hide more round trips; too many
    on a slow downlink would leave each below the minimum rate, and the node would
    cut honest holders off as too slow."""
    if download_rate <= 0:
        return IN_FLIGHT
    return max(1, min(MAX_IN_FLIGHT, int(download_rate // SLOT_RATE)))


def piece_request(digest: bytes, index: int) -> bytes:
    return digest + index.to_bytes(4, "big")


def piece_header(status: int, length: int = 0) -> bytes:
    return bytes([status]) + length.to_bytes(4, "big")


def bitfield(held: np.ndarray) -> bytes:
    return np.packbits(held.astype(np.uint8)).tobytes()


def read_bitfield(data: bytes, n: int) -> np.ndarray:
    if len(data) != -(-n // 8):
        raise PeerFault(f"bitfield of {len(data)} bytes for {n} pieces")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:n].astype(bool)


@dataclass
class Partial:
    """A blob being fetched piece by piece: what it is, and the pieces held so far."""

    window: int
    size: int
    root: bytes
    hashes: list[bytes] | None = None
    pieces: dict[int, bytes] = field(default_factory=dict)
    whole: bytes | None = None  # once complete: the blob, shared with the caller

    @property
    def count(self) -> int:
        return piece_count(self.size)

    def held(self) -> np.ndarray:
        if self.whole is not None:
            return np.ones(self.count, dtype=bool)
        out = np.zeros(self.count, dtype=bool)
        out[list(self.pieces)] = True
        return out

    def piece(self, index: int) -> bytes | memoryview | None:
        if self.whole is not None:  # a view of the finished blob: sent as is, not copied
            start, length = piece_span(index, self.size) if index < self.count else (0, 0)
            return memoryview(self.whole)[start:start + length] if length else None
        return self.pieces.get(index)

    def complete(self, blob: bytes) -> None:
        """Keep the finished blob itself (the caller's object) instead of its pieces."""
        self.whole = blob
        self.pieces = {}

    def accept_list(self, data: bytes) -> None:
        if len(data) != 32 * self.count or pieces_root(
                [data[i:i + 32] for i in range(0, len(data), 32)]) != self.root:
            raise PeerFault("piece list does not hash to the announced root")
        self.hashes = [data[i:i + 32] for i in range(0, len(data), 32)]

    def accept(self, index: int, data: bytes) -> None:
        assert self.hashes is not None
        if len(data) != piece_span(index, self.size)[1]:
            raise PeerFault(f"piece {index}: {len(data)} bytes")
        if hashlib.sha256(data).digest() != self.hashes[index]:
            raise PeerFault(f"piece {index} does not hash to its listed SHA-256")
        self.pieces[index] = data

    def blob(self) -> bytes:
        return b"".join(self.pieces[i] for i in range(self.count))


@dataclass
class FetchJob:
    """One swarm fetch's view: who has what, what is on its way, and from whom."""

    partial: Partial
    ann: Announcement
    failures: dict[str, str]
    views: dict[str, np.ndarray] = field(default_factory=dict)
    asked: dict[int, str] = field(default_factory=dict)  # piece -> source
    # asked pieces whose last bytes are on their way: their source and slot are free
    finishing: set[int] = field(default_factory=set)
    # requests open with each source, and each source's last piece in bytes/s: the
    # mesh passes one of each for all its fetches
    load: Counter[str] = field(default_factory=Counter)
    rates: dict[str, float] = field(default_factory=dict)
    faulted: set[str] = field(default_factory=set)
    resting: dict[str, float] = field(default_factory=dict)  # source -> usable again at
    strikes: Counter[str] = field(default_factory=Counter)  # failures in a row, not busy
    stuck_since: float | None = None

    def __post_init__(self) -> None:
        # the announcer has signed that it holds every piece: a source from the start,
        # before any bitfield round (the first requests would otherwise wait for one)
        if self.ann is not None:
            self.views.setdefault(self.ann.peer_id, np.ones(self.partial.count, dtype=bool))

    def sources(self, now: float, per_source: int = PER_SOURCE) -> list[str]:
        return [p for p in self.views if p not in self.faulted
                and self.resting.get(p, 0.0) <= now and self.load[p] < per_source]

    def waiting_on_load(self) -> bool:
        """Whether a piece this fetch wants is offered by a source that is busy with the
        node's other requests: the fetch waits for it, it is not stuck."""
        wanted = ~self.partial.held()
        wanted[list(self.asked)] = False
        return any(self.load[p] >= PER_SOURCE and bool((view & wanted).any())
                   for p, view in self.views.items() if p not in self.faulted)

    def can_choose(self, now: float) -> bool:
        """Whether a source with fewer than `PER_SOURCE` of the node's requests offers a
        piece this fetch wants and has not asked for."""
        return bool(self._offered(now, PER_SOURCE)[1].any())

    def choose(self, now: float, rng: np.random.Generator, per_source: int = PER_SOURCE
               ) -> tuple[int, str] | None:
        """The next (piece, source) from sources with fewer than `per_source` of the
        node's requests, or None when nothing can be asked for now. The mesh asks with
        `PER_SOURCE_ALONE` only when no fetch of the node can ask with `PER_SOURCE`, so
        that a single source's round trips overlap."""
        usable, candidates = self._offered(now, per_source)
        copies = sum((v.astype(int) for v in self.views.values()),
                     np.zeros(self.partial.count, int))
        piece = rarest_wanted(candidates, copies, rng)
        if piece is None:
            return None
        holders = [i for i, p in enumerate(usable) if self.views[p][piece]]
        loads = np.array([self.load[p] for p in usable])
        rates = np.array([self.rates.get(p, math.inf) for p in usable])
        return piece, usable[fastest_first(holders, loads, rates, rng)]

    def _offered(self, now: float, per_source: int) -> tuple[list[str], np.ndarray]:
        """The usable sources, and the wanted pieces not yet asked that they offer;
        past `PER_SOURCE`, only sources whose last piece came at `PIPELINE_MIN_RATE`."""
        usable = self.sources(now, per_source)
        if per_source > PER_SOURCE:
            usable = [p for p in usable if self.rates.get(p, 0.0) >= PIPELINE_MIN_RATE]
        wanted = ~self.partial.held()
        wanted[list(self.asked)] = False
        offered = np.zeros_like(wanted)
        for p in usable:
            offered |= self.views[p]
        return usable, wanted & offered
