"""`P2PConfig`: the libp2p mesh's frozen configuration (fields only added, with defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from node.mesh.addresses import LOOPBACK, AddressPolicy
from node.mesh.base import DEFAULT_MAX_BLOB_BYTES
from node.mesh.errors import MeshError


@dataclass(frozen=True)
class P2PConfig:
    run: str
    listen_host: str = "127.0.0.1"
    port: int = 0
    bootstrap: tuple[str, ...] = ()  # multiaddrs with /p2p/<peer id>
    policy: AddressPolicy = LOOPBACK
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES
    per_peer_streams: int = 4  # concurrent blob streams served per peer
    requests_per_second: float = 20.0  # blob requests per peer (burst = 2x)
    request_timeout: float = 5.0  # to receive the 40-byte request
    idle_timeout: float = 5.0
    min_rate: float = 256 * 1024
    ban_score: int = -100
    start_timeout: float = 30.0
    heartbeat_interval: int = 1
    # --- bandwidth -----------------------------------------------------------------
    # blob bytes/s served to each requesting peer (0 = unlimited); burst = 1/4 s of it.
    # Keep it above the fetchers' `min_rate` (256 KiB/s for whole blobs, PIECE_MIN_RATE
    # 128 KiB/s for pieces) or they count this node as too slow.
    peer_upload_rate: float = 0.0
    # blob and piece bytes/s served to everyone together (0 = unlimited): the uplink
    upload_rate: float = 0.0
    # the downlink's bytes/s, if the operator knows it (0 = unknown): piece requests
    # kept open at once follow it (`fetch_slots`), 4 when unknown
    download_rate: float = 0.0
    # --- swarming (node/mesh/p2p_swarm.py) ---------------------------------------------
    swarm: bool = True  # fetch announced blobs piece by piece from every holder
    piece_requests_per_second: float = 100.0  # piece, list and bitfield requests per peer
    # --- NAT traversal (all off by default: a loopback node runs none of it) --------------
    relay_service: bool = False  # serve circuit relay v2 (hop) and AutoNAT dial-backs
    relays: tuple[str, ...] = ()  # relay multiaddrs with /p2p/<relay id>: reserve when private
    hole_punch: bool = True  # with relays: DCUtR upgrades of relayed connections
    hole_punch_after: float = 2.0  # s a relayed connection lasts before we initiate DCUtR
    relay_max_reservations: int = 128  # relay_service limits
    relay_max_circuits: int = 64
    relay_circuit_bytes: int = 1 << 34
    relay_circuit_seconds: int = 3600
    autonat_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.peer_upload_rate < 0 or self.upload_rate < 0 or self.download_rate < 0:
            raise MeshError("upload and download rates must be >= 0 (0 = unlimited/unknown)")
        if self.hole_punch_after < 0:
            raise MeshError("hole_punch_after must be >= 0")

    @property
    def nat_traversal(self) -> bool:
        """Whether the relay/AutoNAT/DCUtR machinery runs at all."""
        return self.relay_service or bool(self.relays)

    def check_addresses(self) -> None:
        """Every configured address against the allowlist (raises before any socket)."""
        self.policy.check(f"/ip4/{self.listen_host}/tcp/{self.port or 1}")
        for addr in (*self.bootstrap, *self.relays):
            self.policy.check(addr)
        for addr in self.relays:
            if "/p2p/" not in addr or "/p2p-circuit" in addr:
                raise MeshError(f"a relay address needs /p2p/<relay id> and no circuit: {addr!r}")
