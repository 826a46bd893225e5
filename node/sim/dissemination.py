"""One window's dissemination at internet scale: a discrete-event simulation, no sockets.

N peers, each behind a link (upload, download, RTT); the authors of the window's
selected contributions each publish B bytes, and every peer gathers every selected
contribution it did not write. Two policies:

* `direct`: what the mesh did before swarming: a gatherer fetches each contribution
  whole from its author, at most `streams` at once (the gatherer's concurrency).
* `swarm`: the mesh's policy (node/mesh/p2p_swarm.py, node/mesh/pieces.py): the
  contribution is cut into pieces; a fetcher keeps `in_flight` piece requests open
  over all its fetches together, at most `per_source` with one holder, each for the
  rarest piece it lacks from a holder with a free upload slot (`upload_slots` each)
  that this fetcher uses least and, among those, whose last piece reached it fastest
  (`fastest_first`: a fetcher does not know whom else a holder serves); an author
  sends each of its pieces once before it sends any twice, then serves every piece
  (super-seeding, `seed_allows`); whoever holds a piece serves it onward.

Bytes move at max-min fair rates over every peer's upload and download (how TCP flows
share links when the core is not the bottleneck), optionally also under a per-peer
cap on bytes in + out per second (`host_bps`: a CPU-bound protocol stack). Each
flow's ACKs take `ack_share` of its receiver's uplink, either inside the fair
filling or ahead of the data (`acks`); a peer's serving may be held to a share of
its uplink (`upload_share`). A request
costs `request_rtts` path RTTs before its bytes flow: one, as the mesh sends a piece
request together with the stream's multistream-select handshake and protocol
(node/mesh/p2p_select.py; py-libp2p's own dialogue takes three). With `hand_over`
(the mesh's `tail_watch`), once a piece's bytes still to come would take no longer
than its request's round trips did, its fetcher counts it no more against the source
and its request slots and asks again, so no round trip lies between two pieces from
one holder (the holder's upload slot stays taken until the piece ends). Pure: the
clock is simulated and every random choice comes from `seed`, so a run replays exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from node.mesh.pieces import (
    IN_FLIGHT,
    PER_SOURCE,
    PER_SOURCE_ALONE,
    PIECE_BYTES,
    PIPELINE_MIN_RATE,
    UPLOAD_SLOTS,
    fastest_first,
    piece_count,
    rarest_wanted,
)
from node.sim.flows import Flows, maxmin_rates

Policy = Literal["direct", "swarm"]
Acks = Literal["ahead", "shared"]
ACK_ROUNDS = 8  # fixed-point rounds for the ACKs' share of the uplinks, at most
ACK_TOLERANCE = 1e-6  # ... until no peer's ACK load moves by this share of an uplink


@dataclass(frozen=True)
class Link:
    """A peer's access link. Two peers' path RTT is the mean of their `rtt_s`."""

    up_bps: float
    down_bps: float
    rtt_s: float = 0.0


@dataclass(frozen=True)
class Scenario:
    links: tuple[Link, ...]  # one per peer
    authors: tuple[int, ...]  # peers whose contribution is selected, one each
    size: int  # bytes per contribution
    policy: Policy = "swarm"
    piece: int = PIECE_BYTES
    in_flight: int = IN_FLIGHT  # swarm: piece requests a fetcher keeps open
    upload_slots: int = UPLOAD_SLOTS  # swarm: requests a holder serves at once
    # swarm: requests each peer serves at once, if not `upload_slots` for all (the
    # mesh's `upload_slots(upload_rate)` where an operator set its uplink's rate)
    holder_slots: tuple[int, ...] | None = None
    per_source: int = PER_SOURCE  # swarm: requests a fetcher has open with one holder
    per_source_alone: int = PER_SOURCE_ALONE  # ... when no other holder can take one
    streams: int = 8  # direct: whole contributions fetched at once
    host_bps: float | None = None  # cap on each peer's bytes in + out per second
    request_rtts: float = 1.0  # round trips before a request's bytes flow
    hand_over: bool = True  # swarm: the next request leaves a round trip before the end
    # what a flow's ACKs take of its receiver's uplink, per byte received: a 66-byte
    # ACK for every two 1448-byte segments (delayed ACKs)
    ack_share: float = 66 / (2 * 1448)
    # how those ACKs meet the uplink's data: "shared" (a flow's ACKs hold its rate to
    # the fair share of its receiver's uplink, so a peer whose uplink is full downloads
    # at that share: the namespace lab's FIFO uplinks bear it out better), or "ahead"
    # (served before the data, as a fair queue serves a sparse flow; docs/mesh.md,
    # "ACKs behind a full uplink")
    acks: Acks = "shared"
    # the share of its uplink a peer's serving may take (an operator's declared upload
    # rate below the line rate, leaving room for the ACKs of its own downloads)
    upload_share: float = 1.0

    def __post_init__(self) -> None:
        if len(set(self.authors)) != len(self.authors) or not self.authors:
            raise ValueError("authors must be distinct and at least one")
        if not all(0 <= a < len(self.links) for a in self.authors):
            raise ValueError("an author is not a peer")
        if min(self.size, self.piece, self.in_flight, self.streams, self.upload_slots,
               self.per_source, self.per_source_alone) < 1:
            raise ValueError("size, piece, in_flight and streams must be positive")
        if not 0.0 < self.upload_share <= 1.0:
            raise ValueError("upload_share must be in (0, 1]")
        if self.holder_slots is not None and (len(self.holder_slots) != len(self.links)
                                              or min(self.holder_slots) < 1):
            raise ValueError("holder_slots needs one count of at least 1 per peer")


@dataclass(frozen=True)
class Outcome:
    finish_s: tuple[float, ...]  # per peer: when it held every selected contribution
    bound_s: float  # no policy can finish sooner (bandwidth alone)
    author_upload: float  # mean bytes an author uploaded, in contributions
    transfers: int

    @property
    def slowest_s(self) -> float:
        return max(self.finish_s)

    @property
    def ratio(self) -> float:
        return self.slowest_s / self.bound_s


def lower_bound(s: Scenario) -> float:
    """Seconds no policy can beat: each peer downloads what it lacks through its own
    link; each author uploads its contribution at least once; all those bytes leave
    through the peers' uploads together."""
    n = len(s.links)
    need = [s.size * sum(1 for a in s.authors if a != d) for d in range(n)]
    down = max(8 * need[d] / s.links[d].down_bps for d in range(n))
    author = max(8 * s.size / s.links[a].up_bps for a in s.authors)
    total = 8 * sum(need) / sum(link.up_bps for link in s.links)
    return max(down, author, total)


class _Run:
    """The simulation state of one scenario."""

    def __init__(self, s: Scenario, seed: int) -> None:
        self.s, self.rng = s, np.random.default_rng(seed)
        self.n = len(s.links)
        whole = s.policy == "direct"
        self.m = 1 if whole else piece_count(s.size, s.piece)
        self.piece_bytes = np.full(len(s.authors) * self.m, float(s.size if whole else s.piece))
        tail = s.size - (self.m - 1) * s.piece
        if not whole:
            self.piece_bytes[self.m - 1::self.m] = tail
        self.owner = np.repeat(np.array(s.authors), self.m)
        total = len(self.piece_bytes)
        self.have = np.zeros((self.n, total), dtype=bool)
        self.have[self.owner, np.arange(total)] = True
        self.holders = self.have.sum(axis=0)
        self.asked = np.zeros((self.n, total), dtype=bool)
        self.coming = np.zeros(total, dtype=int)  # copies of each piece on their way
        self.seeded = np.zeros(total, dtype=int)  # copies each piece's author has sent
        self.serving = np.zeros(self.n, dtype=int)
        self.pair = np.zeros((self.n, self.n), dtype=int)  # open requests, fetcher x source
        self.fetching = np.zeros(self.n, dtype=int)
        self.uploaded = np.zeros(self.n)
        self.finish = [0.0 if self.have[d].all() else -1.0 for d in range(self.n)]
        # handed-over flows hold no request slot: room for one more per slot (it grows)
        self.flows = Flows(2 * self.n * self._slots())
        self.now, self.transfers = 0.0, 0
        self.caps = self._caps()
        self.rate_seen = np.full((self.n, self.n), np.inf)  # fetcher x holder, last piece
        self.slots = np.array(s.holder_slots or [s.upload_slots] * self.n)
        self.ack_load: np.ndarray = np.zeros(self.n)  # bytes/s of ACKs on each uplink

    def _caps(self) -> np.ndarray:
        s = self.s
        up = np.array([link.up_bps / 8 for link in s.links])
        down = np.array([link.down_bps / 8 for link in s.links])
        host = np.full(self.n, (s.host_bps or 0.0) / 8)  # a column only with `host_bps`
        # uplinks, downlinks, what the ACKs of a peer's downloads may take (its uplink),
        # the host cap, and what the peer's serving may take of its uplink
        return np.concatenate([up, down, up, host, s.upload_share * up])

    def _slots(self) -> int:
        return self.s.streams if self.s.policy == "direct" else self.s.in_flight

    def schedule(self, d: int) -> None:
        """Fill peer d's free request slots with what can be fetched now."""
        direct = self.s.policy == "direct"
        while self.fetching[d] < self._slots():
            wanted = ~self.have[d] & ~self.asked[d]
            if not direct:
                for limit in (self.s.per_source, self.s.per_source_alone):
                    offers = self._offers(d, limit)
                    if (wanted & offers.any(axis=0)).any():
                        break
                wanted &= offers.any(axis=0)
            p = rarest_wanted(wanted, self.holders + self.coming, self.rng)
            if p is None:
                return
            if direct:
                src = int(self.owner[p])
            else:
                sources = [int(x) for x in np.flatnonzero(offers[:, p])]
                # what a mesh node knows: its own open requests and what its last piece
                # from each holder took, not how many others a holder serves
                src = fastest_first(sources, self.pair[d], self.rate_seen[d], self.rng)
                self.seeded[p] += src == self.owner[p]
            rtt = (self.s.links[d].rtt_s + self.s.links[src].rtt_s) / 2
            self.flows.add(src, d, p, float(self.piece_bytes[p]), self.now,
                           self.now + self.s.request_rtts * rtt)
            self.asked[d, p] = True
            self.coming[p] += 1
            self.serving[src] += 1
            self.pair[d, src] += 1
            self.fetching[d] += 1

    def _offers(self, d: int, per_source: int) -> np.ndarray:
        """Holder x piece: what holders with a free slot, and fewer than `per_source`
        of d's requests open (past the first, only those whose last piece reached d at
        `PIPELINE_MIN_RATE`), may send d now."""
        open_ = (self.serving < self.slots) & (self.pair[d] < per_source)
        if per_source > self.s.per_source:  # a second request: fast sources only
            seen = self.rate_seen[d]
            open_ &= np.isfinite(seen) & (seen >= PIPELINE_MIN_RATE)
        open_[d] = False
        offers: np.ndarray = self.have & open_[:, None]
        offers[self.owner, np.arange(len(self.owner))] &= self._seed_allows()
        return offers

    def _seed_allows(self) -> np.ndarray:
        """Per piece: may its author send it now (`seed_allows`: never sent yet, or every
        piece of the same contribution has left once)?"""
        per = self.seeded.reshape(len(self.s.authors), self.m)
        allowed: np.ndarray = ((per == 0) | (per.min(axis=1, keepdims=True) > 0)).reshape(-1)
        return allowed

    def rates(self, live: np.ndarray) -> np.ndarray:
        """Rates of the `live` flows (indices); 0 for those still waiting out their RTT."""
        f = self.flows
        rates = np.zeros(len(live))
        flowing = f.ready[live] <= self.now + 1e-12
        if flowing.any():
            src, dst = f.src[live[flowing]], f.dst[live[flowing]]
            cols = [src, self.n + dst]
            if self.s.host_bps is not None:
                cols += [3 * self.n + src, 3 * self.n + dst]
            if self.s.upload_share < 1.0:
                cols.append(4 * self.n + src)
            rates[flowing] = self._fair_rates(cols, dst)
        return rates

    def _fair_rates(self, cols: list[np.ndarray], dst: np.ndarray) -> np.ndarray:
        """Max-min rates, each flow's ACKs taking `ack_share` of its receiver's uplink.
        `shared`: inside the fair filling, so a flow stops growing when that uplink
        fills, as the data flows leaving it do. `ahead`: ACKs leave before the data (a
        fair queue serves a sparse flow first): the data shares what the ACKs of the
        peer's downloads leave of its uplink, and a download is capped only where its
        ACKs alone would fill it; a fixed point (ACK load from the rates, rates from the
        caps less that load), started from the last event's load."""
        ahead = self.s.acks == "ahead"
        acks = 2 * self.n + dst if ahead else dst  # a column of its own, or the uplink
        uses = np.stack([cols[0], cols[1], acks, *cols[2:]], axis=1)
        weights = np.ones(uses.shape)
        weights[:, 2] = self.s.ack_share
        if not ahead:
            return maxmin_rates(uses, self.caps, weights)
        up, caps = self.caps[:self.n], self.caps.copy()
        rates = np.zeros(len(dst))
        for _ in range(ACK_ROUNDS):
            caps[:self.n] = np.maximum(up - self.ack_load, 0.0)
            rates = maxmin_rates(uses, caps, weights)
            load = self.s.ack_share * np.bincount(dst, rates, minlength=self.n)
            settled = bool(np.abs(load - self.ack_load).max() <= ACK_TOLERANCE * up.min())
            self.ack_load = load
            if settled:
                break
        return rates

    def step(self, starved: set[int]) -> None:
        """Advance to the next event: a flow finishing or one starting to flow."""
        f = self.flows
        live = np.flatnonzero(f.live)
        rates = self.rates(live)
        left, ready = f.left[live], f.ready[live]
        waits = np.where(rates > 0, left / np.where(rates > 0, rates, 1.0), np.inf)
        waits = np.minimum(waits, np.where(ready > self.now + 1e-12, ready - self.now, np.inf))
        # a hand-over: the bytes left take one request's round trips at this rate
        trip = ready - f.asked[live]
        watched = (rates > 0) & ~f.handed[live] & (trip > 0)
        if not (self.s.hand_over and self.s.policy == "swarm"):
            watched[:] = False
        before = np.where(watched, (left - rates * trip) / np.where(rates > 0, rates, 1.0),
                          np.inf)
        waits = np.minimum(waits, np.maximum(before, 0.0))
        dt = float(waits.min())
        self.now += dt
        f.left[live] = left - rates * dt
        done = (rates > 0) & (f.left[live] <= 1e-6 * self.piece_bytes[f.piece[live]])
        for i in live[done].tolist():
            self._complete(i, starved)
        near = watched & ~done & (f.left[live] <= rates * trip * (1 + 1e-9) + 1e-6)
        for i in live[near].tolist():
            self._hand_over(i, starved)

    def _hand_over(self, i: int, starved: set[int]) -> None:
        """Flow i's fetcher asks again: its source and request slot are free."""
        d, src = int(self.flows.dst[i]), int(self.flows.src[i])
        self.flows.handed[i] = True
        self.pair[d, src] -= 1
        self.fetching[d] -= 1
        starved.add(d)

    def _complete(self, i: int, starved: set[int]) -> None:
        f = self.flows
        src, d, p = int(f.src[i]), int(f.dst[i]), int(f.piece[i])
        self.rate_seen[d, src] = self.piece_bytes[p] / max(self.now - f.asked[i], 1e-9)
        f.remove(i)
        self.have[d, p], self.asked[d, p] = True, False
        self.holders[p] += 1
        self.coming[p] -= 1
        self.serving[src] -= 1
        if not f.handed[i]:
            self.pair[d, src] -= 1
            self.fetching[d] -= 1
        self.uploaded[src] += self.piece_bytes[p]
        self.transfers += 1
        if self.have[d].all():
            self.finish[d] = self.now
        # a new copy or a freed upload slot: whoever has a free request slot may go on
        starved.update(np.flatnonzero(self.fetching < self._slots()).tolist())


def simulate(s: Scenario, seed: int = 0) -> Outcome:
    """Run the scenario until every peer holds every selected contribution."""
    run = _Run(s, seed)
    starved = set(range(run.n))
    while True:
        for d in sorted(starved):
            run.schedule(d)
        starved = set()
        if not run.flows.live.any():
            break
        run.step(starved)
    if min(run.finish) < 0:
        raise RuntimeError("a peer could not gather everything")  # a policy defect
    authors = list(s.authors)
    return Outcome(finish_s=tuple(run.finish), bound_s=lower_bound(s),
                   author_upload=float(run.uploaded[authors].mean()) / s.size,
                   transfers=run.transfers)
