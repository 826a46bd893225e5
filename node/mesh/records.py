"""Signed records: small values stored under (run, window, address) and signed by that
address's chain key (`Mesh.put_record` / `get_record`).

Owns the wire form (`seal_record`), its checks (`read_record`, `open_record`, and
`open_dht_record` for a DHT peer that sees only the hashed key) and the key a DHT
routes (`RecordKey.dht_key`). Pure: no I/O, no clock but `record_seq`'s lower bound;
it never trusts a record whose signature does not recover its key's address.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from node.mesh.base import MAX_RUN_LEN
from node.mesh.errors import BadRecordError
from protocol import canonical
from protocol.errors import ProtocolError
from protocol.identity import ADDRESS_LEN, SIGNATURE_LEN, Identity, keccak256, recover_signer

MAX_RECORD_BYTES = 16 * 1024
_RECORD_DOMAIN = "gradmesh/record/1"


DHT_NAMESPACE = "gm"


@dataclass(frozen=True)
class RecordKey:
    run: str
    window: int
    address: bytes  # 20 bytes: only this address's key may sign the record

    def path(self) -> str:
        """Readable name, for logs and errors: `/gradmesh/<run>/<window>/<address hex>`."""
        return f"/gradmesh/{self.run}/{self.window}/{self.address.hex()}"

    def dht_key(self) -> str:
        """What the DHT stores and routes: `/gm/<40 hex digits>` (44 bytes), the first 20
        bytes of SHA-256 over the key's fields. Kademlia peers route keys that are peer
        ids, multihashes or at most 50 bytes; py-libp2p resets a FIND_NODE stream for
        anything longer, so a longer key never travels past directly connected peers."""
        fields = canonical.pack([_RECORD_DOMAIN, self.run, self.window, self.address])
        return f"/{DHT_NAMESPACE}/{hashlib.sha256(fields).digest()[:20].hex()}"

    @classmethod
    def from_path(cls, path: str) -> RecordKey:
        parts = path.split("/")
        if len(parts) != 5 or parts[0] != "" or parts[1] != "gradmesh":
            raise BadRecordError(f"not a gradmesh record key: {path[:80]!r}")
        try:
            window = int(parts[3])
            address = bytes.fromhex(parts[4])
        except ValueError as exc:
            raise BadRecordError(f"bad record key {path[:80]!r}") from exc
        if len(address) != ADDRESS_LEN or not parts[2] or len(parts[2]) > MAX_RUN_LEN:
            raise BadRecordError(f"bad record key {path[:80]!r}")
        return cls(run=parts[2], window=window, address=address)


def _record_hash(key: RecordKey, value: bytes, seq: int) -> bytes:
    return keccak256(canonical.pack([_RECORD_DOMAIN, key.run, key.window, key.address,
                                     seq, value]))


def seal_record(identity: Identity, key: RecordKey, value: bytes, seq: int = 0) -> bytes:
    """Wire form of a record: canonical msgpack [run, window, address, seq, value,
    signature]. The key's fields travel with it, so a DHT peer that only sees the hashed
    `dht_key` can still check the signature; what is signed is (key, value, seq)."""
    if key.address != identity.address:
        raise BadRecordError("a record can only be put under the signer's own address")
    if len(value) > MAX_RECORD_BYTES:
        raise BadRecordError(f"record value of {len(value)} bytes exceeds {MAX_RECORD_BYTES}")
    signature = identity.sign_hash(_record_hash(key, value, seq))
    return canonical.pack([key.run, key.window, key.address, seq, value, signature])


def read_record(data: bytes) -> tuple[RecordKey, int, bytes]:
    """(key, seq, value) of a sealed record whose signature recovers the key's address;
    raises `BadRecordError` otherwise."""
    try:
        items = canonical.expect_list(
            canonical.unpack(data, max_bytes=MAX_RECORD_BYTES + MAX_RUN_LEN + 256,
                             max_bin_len=MAX_RECORD_BYTES, max_array_len=6),
            6, "record")
        key = RecordKey(run=canonical.expect_str(items[0], "run", max_len=MAX_RUN_LEN),
                        window=canonical.expect_int(items[1], "window"),
                        address=canonical.expect_bytes(items[2], "address",
                                                       length=ADDRESS_LEN))
        seq = canonical.expect_int(items[3], "seq")
        value = canonical.expect_bytes(items[4], "value", max_len=MAX_RECORD_BYTES)
        signature = canonical.expect_bytes(items[5], "signature", length=SIGNATURE_LEN)
        signer = recover_signer(_record_hash(key, value, seq), signature)
    except ProtocolError as exc:
        raise BadRecordError(f"malformed record: {exc}") from exc
    if signer != key.address:
        raise BadRecordError("record is not signed by its key's address")
    return key, seq, value


def open_record(key: RecordKey, data: bytes) -> tuple[int, bytes]:
    """Check a sealed record against its key; returns (seq, value) or raises."""
    got, seq, value = read_record(data)
    if got != key:
        raise BadRecordError(f"record of {got.path()} under {key.path()}")
    return seq, value


def open_dht_record(dht_key: str, data: bytes) -> tuple[RecordKey, int, bytes]:
    """What a DHT peer checks before storing: a valid record whose key hashes to
    `dht_key`."""
    key, seq, value = read_record(data)
    if key.dht_key() != dht_key:
        raise BadRecordError(f"record of {key.path()} does not belong under {dht_key[:50]!r}")
    return key, seq, value


def record_seq(previous: int | None) -> int:
    """Next sequence number for a record: above the last one this process used and
    above anything an earlier run of the same key could have used (microseconds since
    the epoch), so a restarted node's fresh record is not outranked by its stale one."""
    return max(-1 if previous is None else previous, time.time_ns() // 1000) + 1
