"""NAT traversal for the libp2p mesh: circuit relay v2, AutoNAT and DCUtR hole punching.

Imported only by `node.mesh.p2p`; runs on the mesh's trio thread and only
when the config asks for it (`relay_service` or `relays`), so a loopback
node runs none of it.

* `relay_service`: the node serves circuit relay v2 *hop* (reservations and
  circuits, within `relay_max_*` limits) and answers AutoNAT dial-back
  requests. `gradmesh relay` is such a node.
* `relays`: the node connects to each relay, asks it (AutoNAT) whether it is
  reachable; unless the answer is PUBLIC it makes a reservation, keeps it
  fresh and advertises `<relay addr>/p2p-circuit` in its announcements.
  Fetching from a peer it cannot dial directly, it dials that peer's
  announced circuit address. Relayed connections are upgraded by DCUtR
  (`hole_punch`): after `hole_punch_after` seconds this node initiates a hole
  punch (both sides dial each other's NAT-mapped address at once, TCP
  simultaneous open, from the listen port) and new streams take the direct
  connection; the relayed one closes after a grace period.

Every dial, relayed or hole-punching, still goes through the allowlisted TCP
transport, so a node only ever touches networks its `AddressPolicy` allows.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import multiaddr
import trio
from libp2p.host.autonat import AutoNATService, AutoNATStatus
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import MAX_HOLE_PUNCH_ATTEMPTS, DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from node.mesh.p2p_config import P2PConfig
from node.mesh.p2p_host import connection_addrs, is_relayed

log = logging.getLogger(__name__)

DIRECT_DIAL_TIMEOUT = 3.0  # before falling back to a circuit
RESERVE_TIMEOUT = 15.0
RESERVATION_CHECK_S = 5.0

REACHABILITY = {AutoNATStatus.UNKNOWN: "unknown", AutoNATStatus.PUBLIC: "public",
                AutoNATStatus.PRIVATE: "private"}


def relayed_peers(host: Any) -> dict[ID, bool]:
    """Connected peers -> True when every connection to them is relayed."""
    out: dict[ID, bool] = {}
    connections = getattr(host.get_network(), "connections", {}) or {}
    for peer, conns in list(connections.items()):
        conns = conns if isinstance(conns, list) else [conns]
        if conns:
            out[peer] = all(is_relayed(connection_addrs(c)) for c in conns)
    return out


class GatedDCUtR(DCUtRProtocol):
    """py-libp2p's DCUtR with our own driver: a relayed connection is upgraded by
    this side once it has lasted `after` seconds (the stock driver tries after 2 s,
    sequentially, one peer at a time)."""

    def __init__(self, host: Any, after: float) -> None:
        super().__init__(host)
        self.after = after
        self.upgraded: set[ID] = set()

    async def _auto_drive_loop(self) -> None:
        first_seen: dict[ID, float] = {}
        driving: set[ID] = set()

        async def drive(peer: ID) -> None:
            try:
                if await self.initiate_hole_punch(peer):
                    self.upgraded.add(peer)
            except Exception as exc:  # never let a punch take the host down
                log.debug("hole punch to %s: %r", peer, exc)
            finally:
                driving.discard(peer)

        while True:
            await trio.sleep(0.25)
            now = time.monotonic()
            try:
                relayed = relayed_peers(self.host)
            except Exception:
                continue
            for peer in list(first_seen):
                if not relayed.get(peer, False):
                    del first_seen[peer]
            for peer, only_relayed in relayed.items():
                if not only_relayed or peer in driving or peer in self._in_progress:
                    continue
                since = first_seen.setdefault(peer, now)
                if now - since < self.after:
                    continue
                if self._hole_punch_attempts.get(peer, 0) >= MAX_HOLE_PUNCH_ATTEMPTS:
                    continue
                if self._nursery is None:
                    continue
                driving.add(peer)
                self._nursery.start_soon(drive, peer)


class NatTraversal:
    """Relay service and/or client, AutoNAT and DCUtR for one host."""

    def __init__(self, host: Any, cfg: P2PConfig) -> None:
        self.host = host
        self.cfg = cfg
        self.reachability = "unknown"
        self.circuit_addrs: tuple[str, ...] = ()  # ours, to advertise (no /p2p/<self>)
        self._reserved: dict[str, float] = {}  # relay addr -> when reserved
        limits = RelayLimits(duration=cfg.relay_circuit_seconds, data=cfg.relay_circuit_bytes,
                             max_circuit_conns=cfg.relay_max_circuits,
                             max_reservations=cfg.relay_max_reservations)
        self.protocol = CircuitV2Protocol(host, limits=limits, allow_hop=cfg.relay_service)
        roles = RelayRole.STOP | RelayRole.HOP if cfg.relay_service else RelayRole.STOP
        # STOP only on the client side: the stock transport would otherwise try a
        # reservation on every dial
        self.transport = CircuitV2Transport(host, self.protocol,
                                            RelayConfig(roles=roles, limits=limits))
        self.autonat = AutoNATService(host, serve=cfg.relay_service, confirmations=1)
        self.dcutr: GatedDCUtR | None = None
        if cfg.hole_punch and cfg.relays:
            self.dcutr = GatedDCUtR(host, cfg.hole_punch_after)

    async def start(self, stack: contextlib.AsyncExitStack, nursery: trio.Nursery) -> None:
        await stack.enter_async_context(background_trio_service(self.protocol))
        if self.dcutr is not None:
            await stack.enter_async_context(background_trio_service(self.dcutr))
        if self.cfg.relays:
            nursery.start_soon(self._keep_reservations, nursery)

    # ---- reservations ------------------------------------------------------------------
    async def _keep_reservations(self, nursery: trio.Nursery) -> None:
        while True:
            for addr in self.cfg.relays:
                if addr in self._reserved and self._still_reserved(addr):
                    continue
                self._reserved.pop(addr, None)
                try:
                    with trio.fail_after(RESERVE_TIMEOUT):
                        await self._reserve(addr, nursery)
                except Exception as exc:
                    log.info("relay %s: no reservation (%r)", addr, exc)
            self.circuit_addrs = tuple(f"{a}/p2p-circuit" for a in self._reserved)
            await trio.sleep(RESERVATION_CHECK_S)

    def _still_reserved(self, addr: str) -> bool:
        relay = info_from_p2p_addr(multiaddr.Multiaddr(addr)).peer_id
        expires = self.transport._reservations.get(relay)
        return (expires is not None and expires > time.time()
                and relay in self.host.get_connected_peers())

    async def _reserve(self, addr: str, nursery: trio.Nursery) -> None:
        self.cfg.policy.check(addr)
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await self.host.connect(info)
        if self.reachability != "private":
            await self._check_reachability(info.peer_id)
        if self.reachability == "public":
            return  # dialable directly: no circuit to advertise
        stream = await self.host.new_stream(info.peer_id, [HOP_PROTOCOL_ID])
        try:
            ok = await self.transport.reserve(stream, info.peer_id, nursery)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
        if not ok:
            raise ConnectionError("reservation refused")
        self._reserved[addr] = time.monotonic()
        log.info("reserved a slot on relay %s (reachability %s)", addr, self.reachability)

    async def _check_reachability(self, relay: ID) -> None:
        try:
            with trio.fail_after(self.cfg.autonat_timeout):
                await self.autonat.query_server(relay, timeout=self.cfg.autonat_timeout)
        except Exception as exc:
            log.debug("AutoNAT query to %s failed: %r", relay, exc)
            return
        self.autonat.update_status()
        self.reachability = REACHABILITY.get(self.autonat.get_status(), "unknown")

    # ---- dialling -------------------------------------------------------------------------
    async def connect(self, peer: ID, circuits: list[str]) -> None:
        """Reach `peer`: directly if its known addresses work, else through a circuit."""
        if peer in self.host.get_connected_peers():
            return
        errors: list[str] = []
        try:
            known = self.host.get_peerstore().addrs(peer)
        except Exception:  # PeerStoreError: never heard of it
            known = []
        direct = [a for a in known if "/p2p-circuit" not in str(a)]
        if direct:
            with trio.move_on_after(DIRECT_DIAL_TIMEOUT):
                try:
                    await self.host.connect(PeerInfo(peer, direct))
                    return
                except Exception as exc:
                    errors.append(f"direct: {exc!r}")
        for circuit in circuits:
            try:
                self.cfg.policy.check(circuit)
                await self.transport.dial(multiaddr.Multiaddr(circuit))
                return
            except Exception as exc:
                errors.append(f"{circuit}: {exc!r}")
        raise ConnectionError(f"cannot reach {peer}: {'; '.join(errors) or 'no address'}")
