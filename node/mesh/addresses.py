"""Address allowlist: which multiaddrs a node may dial, listen on or advertise.

Checked on the text of the multiaddr before any socket exists. A node
configured for loopback (the default, and what every test uses) refuses any
address whose IP is outside 127.0.0.0/8, any DNS name (resolution could land
anywhere) and any unspecified address such as 0.0.0.0.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from node.mesh.errors import AddressNotAllowedError

_IP_PROTOS = {"ip4", "ip6"}
_NAME_PROTOS = {"dns", "dns4", "dns6", "dnsaddr"}
# protocols with one value component after them
_VALUED = {"ip4", "ip6", "tcp", "udp", "p2p", "ipfs", *_NAME_PROTOS}
_BARE = {"p2p-circuit", "quic", "quic-v1", "ws", "wss", "tls", "noise"}
_TRANSPORTS_OK = {"tcp", "p2p", "ipfs", "p2p-circuit"}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _split(addr: str) -> list[tuple[str, str | None]]:
    if not isinstance(addr, str) or not addr.startswith("/"):
        raise AddressNotAllowedError(f"not a multiaddr: {addr!r:.80}")
    parts = addr.split("/")[1:]
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(parts):
        proto = parts[i]
        if proto in _VALUED:
            if i + 1 >= len(parts) or not parts[i + 1]:
                raise AddressNotAllowedError(f"{proto} without a value in {addr!r:.80}")
            out.append((proto, parts[i + 1]))
            i += 2
        elif proto in _BARE:
            out.append((proto, None))
            i += 1
        else:
            raise AddressNotAllowedError(f"unknown protocol {proto!r} in {addr!r:.80}")
    return out


@dataclass(frozen=True)
class AddressPolicy:
    """Allowed IP networks; `check` raises `AddressNotAllowedError` for anything else."""

    networks: tuple[IPNetwork, ...]

    @classmethod
    def of(cls, cidrs: Iterable[str]) -> AddressPolicy:
        return cls(tuple(ipaddress.ip_network(c) for c in cidrs))

    def allows_ip(self, ip: str) -> bool:
        try:
            parsed = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if parsed.is_unspecified:
            return False
        return any(parsed in net for net in self.networks)

    def check(self, addr: str) -> str:
        """Return `addr` if every IP in it (relay hops included) is allowed."""
        components = _split(addr)
        ips = [v for p, v in components if p in _IP_PROTOS]
        for proto, _ in components:
            if proto in _NAME_PROTOS:
                raise AddressNotAllowedError(f"DNS names are not dialled: {addr!r:.80}")
            if proto not in _IP_PROTOS and proto not in _TRANSPORTS_OK:
                raise AddressNotAllowedError(f"transport {proto!r} not allowed: {addr!r:.80}")
        if not ips and not any(p in {"p2p", "ipfs"} for p, _ in components):
            raise AddressNotAllowedError(f"no IP in {addr!r:.80}")
        for ip in ips:
            if not self.allows_ip(ip or ""):
                raise AddressNotAllowedError(f"{ip} is outside the allowlist: {addr!r:.80}")
        return addr

    def filter(self, addrs: Iterable[str]) -> list[str]:
        """The allowed subset of `addrs` (used on addresses peers advertise)."""
        allowed = []
        for a in addrs:
            try:
                allowed.append(self.check(a))
            except AddressNotAllowedError:
                continue
        return allowed


LOOPBACK = AddressPolicy.of(["127.0.0.0/8"])
