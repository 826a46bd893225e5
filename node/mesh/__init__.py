"""Peer-to-peer transport: the `Mesh` protocol, an in-memory and a libp2p implementation.

`node.mesh.p2p` is the only module that imports `libp2p` or `trio`; import it
explicitly (it is not loaded here, so the rest of the node stays light). The
simulator's in-process `MemoryBoard` lives in board.py. Imports only `protocol`
(and `node.errors`); it knows nothing of models, the chain or the runtime.
"""

from node.mesh.addresses import LOOPBACK, AddressPolicy
from node.mesh.base import (
    AddressNotAllowedError,
    Announcement,
    BadAnnouncementError,
    BadRecordError,
    BlobTooLargeError,
    DialError,
    FetchError,
    FetchTimeoutError,
    HashMismatchError,
    Mesh,
    MeshError,
    MeshStateError,
    MeshStats,
    MeshTimeoutError,
    NoSourceError,
    RecordKey,
    Subscription,
)
from node.mesh.memory import MemoryMesh, MemoryNetwork

__all__ = [
    "LOOPBACK",
    "AddressNotAllowedError",
    "AddressPolicy",
    "Announcement",
    "BadAnnouncementError",
    "BadRecordError",
    "BlobTooLargeError",
    "DialError",
    "FetchError",
    "FetchTimeoutError",
    "HashMismatchError",
    "MemoryMesh",
    "MemoryNetwork",
    "Mesh",
    "MeshError",
    "MeshStateError",
    "MeshStats",
    "MeshTimeoutError",
    "NoSourceError",
    "RecordKey",
    "Subscription",
]
