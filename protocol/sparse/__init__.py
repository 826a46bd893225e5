"""SparseLoCo codec: chunked top-k, 2-bit values, fixed or Rice-coded indices."""

from protocol.sparse.codec import (
    SparseTensor,
    compress,
    decode_payload,
    decompress,
    encode_payload,
    payload_cap,
    sparse_norm,
)
from protocol.sparse.layout import (
    ChunkLayout,
    chunk_layout,
    chunk_magnitudes,
    flat_positions,
    from_chunks,
    to_chunks,
)
from protocol.sparse.quant import dequantize, quantize
from protocol.sparse.view import SparsePayload

__all__ = [
    "ChunkLayout",
    "SparsePayload",
    "SparseTensor",
    "chunk_layout",
    "chunk_magnitudes",
    "compress",
    "decode_payload",
    "decompress",
    "dequantize",
    "encode_payload",
    "flat_positions",
    "from_chunks",
    "payload_cap",
    "quantize",
    "sparse_norm",
    "to_chunks",
]
