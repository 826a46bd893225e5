"""Serving pieces for `P2PMesh` (a mixin; trio side of the bridge).

`/gradmesh/piece/1` (wire format in node/mesh/p2p_pieces.py). A node answers from
whole blobs it holds and from the pieces of the blobs it is fetching, each request
under the per-peer request bucket, the per-peer stream cap and the node's upload
slots (`UPLOAD_SLOTS`; BUSY beyond them). An author super-seeds a blob it holds
whole (`seed_allows`): each piece leaves once before any leaves twice. The hash
list of a held blob is computed once. Must never: serve bytes that were not
checked against their piece's hash, or count a piece refused or not sent (in
super-seeding or in `blobs_served`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from node.mesh.base import BlobStore
from node.mesh.p2p_blob import BUSY, NOT_FOUND, OK, read_exact, serve_guarded
from node.mesh.p2p_pieces import (
    HAVE,
    LIST,
    REQUEST_LEN,
    Partial,
    bitfield,
    piece_header,
)
from node.mesh.pieces import piece_count, piece_hashes, piece_span, seed_allows


class PieceServing:
    """The serving half of `P2PMesh`'s pieces; the attributes below are the mesh's."""

    _blobs: BlobStore
    _partials: dict[bytes, Partial]
    _served: int
    _seeding: dict[bytes, np.ndarray]
    _lists: dict[bytes, bytes]
    _piece_bytes_out: dict[bytes, int]
    _upload_slots: trio.Semaphore | None

    if TYPE_CHECKING:  # from the blob mixin (node/mesh/p2p_transfer.py)
        async def _admit(self, stream: Any) -> str | None: ...
        async def _send_body(self, stream: Any, peer: str, data: bytes | memoryview
                             ) -> None: ...

    async def _guarded_piece_handler(self, stream: Any) -> None:
        await serve_guarded(self._serve_piece, stream, "piece")

    async def _serve_piece(self, stream: Any) -> None:
        peer = await self._admit(stream)
        if peer is None:
            return
        request = await read_exact(stream, REQUEST_LEN, 5.0)
        digest, index = request[:32], int.from_bytes(request[32:], "big")
        body = self._piece_body(digest, index)
        if body is None:
            await stream.write(piece_header(NOT_FOUND))
        elif index < HAVE and not self._seed_allows(digest, index):
            await stream.write(piece_header(BUSY))
        elif index >= HAVE or self._upload_slots is None:
            await self._send_piece(stream, peer, body)
        else:
            try:
                self._upload_slots.acquire_nowait()
            except trio.WouldBlock:
                self._unseed(digest, index)
                await stream.write(piece_header(BUSY))
            else:
                try:
                    await self._send_piece(stream, peer, body)
                    self._count_served(digest, len(body))
                except BaseException:
                    self._unseed(digest, index)  # not sent: the piece is still owed
                    raise
                finally:
                    self._upload_slots.release()
        await stream.close()

    def _count_served(self, digest: bytes, n: int) -> None:
        """`blobs_served` counts blobs' worth of pieces sent, per blob."""
        blob, partial = self._blobs.get(digest), self._partials.get(digest)
        size = len(blob) if blob is not None else partial.size if partial is not None else 0
        before = self._piece_bytes_out.get(digest, 0)
        self._piece_bytes_out[digest] = before + n
        if size:
            self._served += (before + n) // size - before // size

    async def _send_piece(self, stream: Any, peer: str, body: bytes | memoryview) -> None:
        """The header at once, then the body as the upload budgets allow, a chunk at a
        time: the fetcher sees bytes flowing, never a silent wait for a whole piece's
        budget."""
        await stream.write(piece_header(OK, len(body)))
        await self._send_body(stream, peer, body)  # ~1/8 s of budget per write

    def _seed_allows(self, digest: bytes, index: int) -> bool:
        """Super-seeding (`seed_allows`) for a blob this node holds whole."""
        blob = self._blobs.get(digest)
        if blob is None:
            return True
        sent = self._seeding.setdefault(digest, np.zeros(piece_count(len(blob)), dtype=int))
        return seed_allows(sent, index)

    def _unseed(self, digest: bytes, index: int) -> None:
        """A piece counted by `_seed_allows` that did not go out after all."""
        sent = self._seeding.get(digest)
        if sent is not None and index < len(sent) and sent[index] > 0:
            sent[index] -= 1

    def piece_list(self, digest: bytes, blob: bytes) -> bytes:
        """The hash list of a blob held whole, hashed once (at `announce`, or at the first
        request for a held blob) rather than at every fetcher's request."""
        if digest not in self._lists:
            self._lists[digest] = b"".join(piece_hashes(blob))
        return self._lists[digest]

    def _piece_body(self, digest: bytes, index: int) -> bytes | memoryview | None:
        """What to answer `index` of `digest` with, from a whole blob or a partial one."""
        blob = self._blobs.get(digest)
        if blob is not None:
            n = piece_count(len(blob))
            if index == LIST:
                return self.piece_list(digest, blob)
            if index == HAVE:
                return bitfield(np.ones(n, dtype=bool))
            if index < n:
                start, length = piece_span(index, len(blob))
                return memoryview(blob)[start:start + length]  # sent as is, not copied
            return None
        partial = self._partials.get(digest)
        if partial is None or partial.hashes is None:
            return None
        if index == LIST:
            return b"".join(partial.hashes)
        if index == HAVE:
            return bitfield(partial.held())
        return partial.piece(index)
