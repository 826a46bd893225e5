"""Building the py-libp2p host: allowlisted TCP, Noise, yamux, gossipsub, Kademlia.

Imported only by `node.mesh.p2p`. Security options are set explicitly (Noise
only: the default host would also accept plaintext); mDNS and UPnP are off;
every dial, including libp2p's own internal ones (DHT, identify, DCUtR), goes
through `_AllowlistTCP`, which checks the address before any socket exists.
"""

from __future__ import annotations

from typing import Any

import coincurve
import multiaddr
from libp2p import new_host
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.transport.tcp.tcp import TCP

from node.mesh import p2p_noise
from node.mesh.addresses import AddressPolicy
from node.mesh.errors import BadRecordError
from node.mesh.p2p_config import P2PConfig
from node.mesh.p2p_yamux import muxer_options
from node.mesh.records import DHT_NAMESPACE, open_dht_record
from protocol.identity import address_from_public_key


def peer_address(peer: ID) -> bytes | None:
    """Ethereum address bound to a secp256k1 peer id (None for other key types)."""
    try:
        key = peer.extract_public_key()
    except Exception:
        return None
    if key is None:
        return None
    try:
        return address_from_public_key(coincurve.PublicKey(key.to_bytes()))
    except Exception:
        return None


class AllowlistTCP(TCP):
    """TCP transport that refuses, before any socket, addresses off the allowlist."""

    def __init__(self, policy: AddressPolicy) -> None:
        super().__init__()
        self._policy = policy

    async def dial(self, maddr: multiaddr.Multiaddr) -> Any:
        self._policy.check(str(maddr))
        return await super().dial(maddr)

    async def dial_with_source(self, maddr: multiaddr.Multiaddr, source: tuple[str, int]) -> Any:
        self._policy.check(str(maddr))
        return await super().dial_with_source(maddr, source)


class RecordValidator(Validator):
    """DHT validator for `/gm/<hash of run, window, address>` (`RecordKey.dht_key`): a
    record of this run, whose fields hash to the key and whose signer is its address."""

    def __init__(self, run: str) -> None:
        self.run = run

    def validate(self, key: str, value: bytes) -> None:
        rk, _, _ = open_dht_record(key, value)
        if rk.run != self.run:
            raise BadRecordError(f"record of run {rk.run!r}, this mesh serves {self.run!r}")

    def select(self, key: str, values: list[bytes]) -> int:
        best, best_seq = 0, -1
        for i, v in enumerate(values):
            try:
                _, seq, _ = open_dht_record(key, v)
            except BadRecordError:
                continue
            if seq > best_seq:
                best, best_seq = i, seq
        return best


def listen_multiaddr(cfg: P2PConfig) -> multiaddr.Multiaddr:
    return multiaddr.Multiaddr(f"/ip4/{cfg.listen_host}/tcp/{cfg.port}")


def build_host(cfg: P2PConfig, key_pair: Any) -> Any:
    p2p_noise.install()  # Noise sessions that batch their socket writes and reads
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt=muxer_options(),
        listen_addrs=[listen_multiaddr(cfg)],
        transports=[AllowlistTCP(cfg.policy)],
        enable_mDNS=False,
        enable_upnp=False,
        addrs_factory=lambda addrs: [a for a in addrs if cfg.policy.filter([str(a)])],
    )


def build_pubsub(cfg: P2PConfig, host: Any) -> tuple[Pubsub, GossipSub]:
    gossipsub = GossipSub(
        protocols=[TProtocol("/meshsub/1.1.0")], degree=6, degree_low=4, degree_high=12,
        heartbeat_interval=cfg.heartbeat_interval, heartbeat_initial_delay=0.1,
        eclipse_protection_enabled=False,  # every test peer shares 127.0.0.1
    )
    return Pubsub(host, gossipsub, strict_signing=True), gossipsub


def build_dht(cfg: P2PConfig, host: Any) -> KadDHT:
    return KadDHT(host, DHTMode.SERVER,
                  validator=NamespacedValidator({DHT_NAMESPACE: RecordValidator(cfg.run)},
                                                strict_validation=True),
                  validator_changed=True, strict_validation=True, enable_providers=False)


def connection_addrs(conn: Any) -> list[str]:
    """Transport addresses of a swarm or muxed connection ('' parts dropped)."""
    for obj in (conn, getattr(conn, "muxed_conn", None)):
        if obj is None:
            continue
        getter = getattr(obj, "get_transport_addresses", None)
        if getter is not None:
            try:
                addrs = [str(a) for a in getter()]
            except Exception:
                addrs = []
            if addrs:
                return addrs
    return []


def is_relayed(addrs: list[str]) -> bool:
    return bool(addrs) and all("/p2p-circuit" in a for a in addrs)
