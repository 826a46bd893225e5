"""The swarming policy: which piece a fetcher asks for next, and from whom (pure).

A contribution is cut into fixed-size pieces. A holder serves at most `UPLOAD_SLOTS`
requests at once (up to `MAX_UPLOAD_SLOTS` where its operator declared a fast
uplink). A fetcher with a free request slot asks for the rarest piece it lacks among
those some holder has a free upload slot for (fewest copies, counting copies
already on their way; ties broken by the caller's seeded generator, so that
fetchers spread out), from the holder it has the fewest requests open with and,
among those, the one whose last piece reached it fastest (one never tried counts as
fastest, so every holder gets tried); with no such piece it waits. A fetcher knows
only its own requests and what they took, not how many others a holder serves:
ranking by its own measured rates steers it off holders that are slow or crowded
without every fetcher herding onto the same one. Whoever holds a piece serves it
onward, and an author sends every piece once before any twice (`seed_allows`), so
its upload goes first to the pieces nobody else has yet. Time and randomness come
from the caller: the dissemination simulator (node/sim/dissemination.py) replays the
same choices the mesh (node/mesh/p2p_swarm.py) makes.

This module decides; it never moves bytes, keeps no state and never blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

# the piece: 1 MiB. 2 MiB pieces did better in the namespace lab (4 peers 1.28-1.33x
# the bound against 1.36-1.41x: fewer requests, streams and hand-overs), but in the
# simulator they cost 1B contributions at internet scale (70 peers with home uplinks
# 2.96x -> 4.83x: fewer pieces to spread); docs/mesh.md, "Pieces of 2 MiB"
PIECE_BYTES = 1 << 20
UPLOAD_SLOTS = 8  # requests a holder serves at once, its uplink unknown
# ... at most, its uplink declared fast enough to give each of them the fetchers'
# minimum rate: 1.5 x MAX_IN_FLIGHT. With fetchers at 8 requests each (declared
# downlinks) and holders at 8 slots, fetchers waited for free slots (an answer handed
# over still holds its slot): 20 peers on 1 Gb/s links took 1.82-2.01x the bound in
# the simulator, 1.10-1.11x with 12 slots (docs/mesh.md, "Declared links")
MAX_UPLOAD_SLOTS = 12
IN_FLIGHT = 4  # piece requests a fetcher keeps open, over all its fetches together
MAX_IN_FLIGHT = 8  # ... when its downlink is known to carry that many
PER_SOURCE = 1  # of which at most this many with any one holder
# ... or this many, when no other holder can take a request for a wanted piece and
# this one's last piece came at `PIPELINE_MIN_RATE` or faster: a fetcher with a
# single fast source then hides the round trip between its pieces (a slow source's
# round trip is a small part of a piece's time, and a second request would only
# take an upload slot from another fetcher)
PER_SOURCE_ALONE = 2
PIPELINE_MIN_RATE = 2 * PIECE_BYTES  # bytes/s, request to last byte: a piece in 0.5 s


def piece_count(size: int, piece: int = PIECE_BYTES) -> int:
    """Pieces of a blob of `size` bytes (at least one, the last may be short)."""
    if piece <= 0:
        raise ValueError("piece size must be positive")
    return max(1, -(-size // piece))


def piece_span(index: int, size: int, piece: int = PIECE_BYTES) -> tuple[int, int]:
    """(offset, length) of piece `index` of a blob of `size` bytes."""
    if not 0 <= index < piece_count(size, piece):
        raise IndexError(f"piece {index} of a {size}-byte blob")
    start = index * piece
    return start, min(piece, size - start)


def piece_hashes(blob: bytes, piece: int = PIECE_BYTES) -> list[bytes]:
    """SHA-256 of every piece of `blob`, in order."""
    return [hashlib.sha256(blob[i * piece:(i + 1) * piece]).digest()
            for i in range(piece_count(len(blob), piece))]


def pieces_root(hashes: Sequence[bytes]) -> bytes:
    """What an announcement signs for the pieces: SHA-256 over the hash list."""
    return hashlib.sha256(b"".join(hashes)).digest()


def rarest_wanted(wanted: np.ndarray, copies: np.ndarray,
                  rng: np.random.Generator) -> int | None:
    """Index of the rarest piece among `wanted` (bool per piece: lacking, not yet asked
    for, and obtainable now), by `copies` (holders plus copies on their way), ties
    broken at random; None when nothing is wanted."""
    candidates = np.flatnonzero(wanted)
    if not len(candidates):
        return None
    counts = copies[candidates]
    rarest = candidates[counts == counts.min()]
    return int(rarest[rng.integers(len(rarest))])


def fastest_first(sources: Sequence[int], load: np.ndarray, rate: np.ndarray,
                  rng: np.random.Generator) -> int:
    """The source to ask among `sources` (indices into `load` and `rate`): the fewest
    requests open with it (`load`), then the fastest last piece (`rate`, bytes/s;
    `inf` for one never tried), ties broken at random."""
    if not sources:
        raise ValueError("no source to choose from")
    idx = list(sources)
    loads = load[idx]
    fewest = [s for s, n in zip(idx, loads, strict=True) if n == loads.min()]
    rates = rate[fewest]
    best = [s for s, r in zip(fewest, rates, strict=True) if r == rates.max()]
    return int(best[rng.integers(len(best))])


def seed_allows(sent: np.ndarray, index: int) -> bool:
    """Super-seeding by a blob's author, `sent` its copies sent per piece: until every
    piece has left once, a piece already sent is refused (its first copies go out
    before any duplicate); after that every piece is served, so a copy lost on the
    way is owed again and pieces nobody asks the author for any more cannot hold back
    those still wanted. Counts the copy (in `sent`) when it allows one."""
    if sent[index] > 0 and sent.min() == 0:
        return False
    sent[index] += 1
    return True
