"""Peer-to-peer transport: the `Mesh` protocol, an in-memory and a libp2p implementation.

`node.mesh.p2p` and its `p2p_*` parts are the only modules that import `libp2p` or
`trio` (a test guards it); import it explicitly (it is not loaded here, so the rest
of the node stays light). Errors: node/mesh/errors.py; signed records: records.py. The
simulator's in-process `MemoryBoard` lives in board.py. Imports only `protocol`
(and `node.errors`); it knows nothing of models, the chain or the runtime.
"""

from node.mesh.addresses import LOOPBACK, AddressPolicy
from node.mesh.base import Announcement, Mesh, MeshStats, Subscription
from node.mesh.errors import (
    AddressNotAllowedError,
    BadAnnouncementError,
    BadRecordError,
    BlobTooLargeError,
    DialError,
    FetchError,
    FetchTimeoutError,
    HashMismatchError,
    MeshError,
    MeshStateError,
    MeshTimeoutError,
    NoSourceError,
)
from node.mesh.memory import MemoryMesh, MemoryNetwork
from node.mesh.records import RecordKey

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
