"""Small signed DHT records a node leaves behind so others can catch up.

* window record, key (run, w, address): θ's digest after the node applied
  window w and the (signer, sha256) of every envelope it applied, so a late
  joiner can fetch exactly those envelopes and replay the step;
* head record, key (run, HEAD, address): the node's latest applied window and
  latest checkpoint (window and manifest hash), where catch-up starts.

The mesh signs and verifies records against the key's address; these codecs
only fix the value's shape and raise `BadRecordValueError` on anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.errors import NodeError
from node.mesh.records import RecordKey
from protocol import canonical
from protocol.errors import ProtocolError
from protocol.identity import ADDRESS_LEN

HEAD_WINDOW = 2**62  # a window number no run reaches: the head record's slot
MAX_INPUTS = 256
_VERSION = 1
_U63 = 2**63 - 1


class BadRecordValueError(NodeError):
    """A record's value does not have the expected shape."""


def _unpack(data: bytes, length: int, what: str) -> list[canonical.WireValue]:
    try:
        value = canonical.unpack(data, max_bytes=16 * 1024, max_bin_len=64,
                                 max_array_len=MAX_INPUTS, max_str_len=256)
        items = canonical.expect_list(value, length, what)
        if canonical.expect_int(items[0], "version") != _VERSION:
            raise BadRecordValueError(f"{what}: unknown version")
        return items
    except ProtocolError as exc:
        raise BadRecordValueError(f"{what}: {exc}") from exc


@dataclass(frozen=True)
class WindowRecord:
    window: int
    digest_after: bytes
    inputs: tuple[tuple[bytes, bytes], ...]  # (signer address, envelope sha256), signer order

    def encode(self) -> bytes:
        return canonical.pack([_VERSION, self.window, self.digest_after,
                               [[s, h] for s, h in self.inputs]])

    @classmethod
    def decode(cls, data: bytes) -> WindowRecord:
        items = _unpack(data, 4, "window record")
        try:
            pairs = items[3]
            if not isinstance(pairs, list):
                raise BadRecordValueError("window record: inputs must be a list")
            inputs = []
            for pair in pairs:
                signer, sha = canonical.expect_list(pair, 2, "input")
                inputs.append((canonical.expect_bytes(signer, "signer", length=ADDRESS_LEN),
                               canonical.expect_bytes(sha, "sha256", length=32)))
            return cls(window=canonical.expect_int(items[1], "window", hi=_U63),
                       digest_after=canonical.expect_bytes(items[2], "digest", length=32),
                       inputs=tuple(inputs))
        except ProtocolError as exc:
            raise BadRecordValueError(f"window record: {exc}") from exc


@dataclass(frozen=True)
class HeadRecord:
    applied_window: int  # last window whose outer step this node applied (-1: none)
    digest: bytes  # θ after that window
    checkpoint_window: int  # θ at the start of this window is checkpointed (-1: none)
    checkpoint_sha256: bytes  # the signed checkpoint manifest's hash (b"" when none)
    peer_id: str
    addrs: tuple[str, ...] = ()  # where to dial the node (filtered by the reader's policy)

    def encode(self) -> bytes:
        return canonical.pack([_VERSION, self.applied_window + 1, self.digest,
                               self.checkpoint_window + 1, self.checkpoint_sha256, self.peer_id,
                               list(self.addrs[:8])])

    @classmethod
    def decode(cls, data: bytes) -> HeadRecord:
        items = _unpack(data, 7, "head record")
        try:
            sha = canonical.expect_bytes(items[4], "checkpoint", max_len=32)
            if len(sha) not in (0, 32):
                raise BadRecordValueError("head record: checkpoint hash must be 0 or 32 bytes")
            return cls(applied_window=canonical.expect_int(items[1], "applied", hi=_U63) - 1,
                       digest=canonical.expect_bytes(items[2], "digest", length=32),
                       checkpoint_window=canonical.expect_int(items[3], "ckpt", hi=_U63) - 1,
                       checkpoint_sha256=sha,
                       peer_id=canonical.expect_str(items[5], "peer id", max_len=128),
                       addrs=_addrs(items[6]))
        except ProtocolError as exc:
            raise BadRecordValueError(f"head record: {exc}") from exc


def _addrs(value: canonical.WireValue) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > 8:
        raise BadRecordValueError("head record: at most 8 addresses")
    return tuple(canonical.expect_str(a, "addr", max_len=256) for a in value)


def window_key(run: str, window: int, address: bytes) -> RecordKey:
    return RecordKey(run, window, address)


def head_key(run: str, address: bytes) -> RecordKey:
    return RecordKey(run, HEAD_WINDOW, address)
