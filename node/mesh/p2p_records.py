"""DHT records for `P2PMesh`: signed values put and read under a `RecordKey` (a mixin;
asyncio side of the bridge).

A record is sealed with the node's key and a sequence number (node/mesh/records.py,
`seal_record`) and stored through the Kademlia DHT under the key's routable form
(`RecordKey.dht_key`); reading one checks the seal and returns the value alone.
Errors are the mesh's: `MeshStateError` before `start()`, `MeshTimeoutError` when
a put's deadline passes, `MeshError` for what libp2p raised; a read nobody
answered in time is "not found" (None), as `Mesh.get_record` says.

Must never: return a value whose seal did not check, or raise anything but a
`MeshError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from node.mesh.errors import MeshError, MeshStateError, MeshTimeoutError
from node.mesh.records import RecordKey, open_record, record_seq, seal_record
from protocol.identity import Identity


class Records:
    """The record half of `P2PMesh`; the attributes below are the mesh's."""

    _running: bool
    _identity: Identity
    _seqs: dict[RecordKey, int]
    _dht: Any

    if TYPE_CHECKING:  # the mesh's asyncio -> trio bridge (node/mesh/p2p.py)
        async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any,
                        timeout: float) -> Any: ...

    async def put_record(self, key: RecordKey, value: bytes) -> None:
        if not self._running:
            raise MeshStateError("mesh is not running")
        seq = record_seq(self._seqs.get(key))
        sealed = seal_record(self._identity, key, value, seq)
        self._seqs[key] = seq
        try:
            await self._call(self._dht.put_value, key.dht_key(), sealed, timeout=20.0)
        except MeshError:
            raise  # MeshTimeoutError when the deadline passed
        except TimeoutError as exc:
            raise MeshTimeoutError(f"record {key.path()}: {exc}") from exc
        except Exception as exc:  # OSError, libp2p's errors
            raise MeshError(f"record {key.path()} not stored: {type(exc).__name__}: {exc}"
                            ) from exc

    async def get_record(self, key: RecordKey, *, timeout: float = 10.0) -> bytes | None:
        if not self._running:
            raise MeshStateError("mesh is not running")
        try:
            sealed = await self._call(self._dht.get_value, key.dht_key(), timeout=timeout)
        except TimeoutError:
            return None  # nobody answered in time: not found (see `Mesh.get_record`)
        except MeshError:
            raise
        except Exception as exc:  # OSError, libp2p's errors
            raise MeshError(f"record {key.path()} lookup failed: {type(exc).__name__}: {exc}"
                            ) from exc
        if sealed is None:
            return None
        return open_record(key, sealed)[1]
