"""Pure, I/O-free wire protocol of gradmesh.

Everything a stranger's node needs to trust or reject a contribution lives here:
identities and signatures, the signed envelope, the canonical msgpack codec, the
sparse (SparseLoCo) and dense payload codecs, size caps and window arithmetic.
No module in this package opens files or sockets or reads the clock.
"""

from protocol.errors import ProtocolError

SCHEMA_VERSION = 2  # 2: the base carries the author's proof of holding it

__all__ = ["SCHEMA_VERSION", "ProtocolError"]
