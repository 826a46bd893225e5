"""What a `P2PMesh` says about itself and its peers: its ids and addresses (listen,
dial, relay circuits, advertised), AutoNAT's verdict, peer scores and bans, and the
connections open to a peer. Read-only views of the mesh's state (a mixin of
`P2PMesh`, node/mesh/p2p.py); nothing here dials, sends or changes a score.
"""

from __future__ import annotations

from typing import Any

from libp2p.peer.id import ID

from node.mesh.base import MAX_ADDRS
from node.mesh.p2p_config import P2PConfig
from node.mesh.p2p_host import connection_addrs, is_relayed
from node.mesh.p2p_transfer import _PeerState
from protocol.identity import Identity


class PeerViews:
    """The mesh's identity, addresses and peers; the attributes below are the mesh's."""

    _cfg: P2PConfig
    _identity: Identity
    _peer_id: ID
    _addrs: tuple[str, ...]
    _nat: Any
    _peers: dict[str, _PeerState]
    _running: bool
    _host: Any

    @property
    def peer_id(self) -> str:
        return self._peer_id.to_base58()

    @property
    def address(self) -> bytes:
        return self._identity.address

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        return self._addrs

    @property
    def dial_addrs(self) -> tuple[str, ...]:
        """Listen addresses with `/p2p/<peer id>`: what others bootstrap from (and what
        nodes put in `P2PConfig.relays` when this node runs with `relay_service`)."""
        return tuple(f"{a}/p2p/{self.peer_id}" for a in self._addrs)

    @property
    def circuit_addrs(self) -> tuple[str, ...]:
        """`<relay>/p2p-circuit/p2p/<peer id>` for each relay holding a reservation for us."""
        nat = self._nat
        return tuple(f"{a}/p2p/{self.peer_id}" for a in (nat.circuit_addrs if nat else ()))

    @property
    def advertised_addrs(self) -> tuple[str, ...]:
        """What announcements carry: listen addresses, then relay circuit addresses."""
        nat = self._nat
        return (*self._addrs, *(nat.circuit_addrs if nat else ()))[:MAX_ADDRS]

    @property
    def reachability(self) -> str:
        """AutoNAT's verdict from our relays: 'public', 'private' or 'unknown'."""
        return self._nat.reachability if self._nat is not None else "unknown"

    def peer_score(self, peer_id: str) -> int:
        return self._peers[peer_id].score if peer_id in self._peers else 0

    def banned(self, peer_id: str) -> bool:
        return peer_id in self._peers and self._peers[peer_id].score <= self._cfg.ban_score

    def connected_peers(self) -> tuple[str, ...]:
        if not self._running or self._host is None:
            return ()
        try:
            return tuple(sorted(p.to_base58() for p in self._host.get_connected_peers()))
        except Exception:
            return ()

    def connection_paths(self, peer_id: str) -> tuple[tuple[str, ...], ...]:
        """Transport addresses of each open connection to `peer_id` (a relayed one reads
        `/p2p/<relay>/p2p-circuit/p2p/<peer>`; a direct one `/ip4/<ip>/tcp/<port>`)."""
        if not self._running or self._host is None:
            return ()
        try:
            conns = self._host.get_network().connections.get(ID.from_base58(peer_id), [])
            conns = conns if isinstance(conns, list) else [conns]
            return tuple(tuple(connection_addrs(c)) for c in conns)
        except Exception:
            return ()

    def direct_connection(self, peer_id: str) -> tuple[str, ...] | None:
        """The transport addresses of a non-relayed connection to `peer_id`, if any."""
        for path in self.connection_paths(peer_id):
            if path and not is_relayed(list(path)):
                return path
        return None
