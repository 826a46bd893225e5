"""Bitfields in batches (node/mesh/p2p_haves.py): the request's bounds, the rounds'
one clock, and how each digest's answer is read from a holder's reply."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from node.mesh.p2p_blob import NOT_FOUND, OK, PeerFault, PeerUnavailable
from node.mesh.p2p_haves import MAX_BATCH, HaveBatches, haves_request, next_round
from node.mesh.p2p_pieces import HAVE_EVERY_S, bitfield, piece_header


class Reply:
    """A stream that hands out `data` a few bytes at a time."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, n: int) -> bytes:
        out, self.data = self.data[:min(n, 3)], self.data[min(n, 3):]
        return out


def read_have(reply: bytes, count: int) -> np.ndarray | Exception:
    node = HaveBatches()
    node._in = 0

    async def main() -> np.ndarray | Exception:
        return await node._read_have(Reply(reply), count)

    return trio.run(main)


def test_a_request_holds_one_to_max_batch_digests() -> None:
    assert haves_request([b"\1" * 32, b"\2" * 32]) == b"\2" + b"\1" * 32 + b"\2" * 32
    for bad in ([], [b"\0" * 32] * (MAX_BATCH + 1), [b"short"]):
        with pytest.raises(ValueError, match="digests"):
            haves_request(bad)


def test_rounds_keep_to_one_clock() -> None:
    assert next_round(0.0) == HAVE_EVERY_S
    assert next_round(3 * HAVE_EVERY_S + 0.01) == 4 * HAVE_EVERY_S
    assert next_round(3 * HAVE_EVERY_S) == 4 * HAVE_EVERY_S  # never now: a round ran


def test_each_digest_is_answered_with_its_bitfield_or_not_found() -> None:
    held = np.array([True, False, True, True, False, False, True, True, True, False])
    got = read_have(piece_header(OK, 2) + bitfield(held), 10)
    assert isinstance(got, np.ndarray)
    assert (got == held).all()
    lacking = read_have(piece_header(NOT_FOUND), 10)
    assert isinstance(lacking, PeerUnavailable)


@pytest.mark.parametrize("reply", [piece_header(OK, 3) + b"\0" * 3,  # 10 pieces: 2 bytes
                                   piece_header(NOT_FOUND, 2) + b"\0" * 2,
                                   piece_header(9, 2) + b"\0" * 2])
def test_a_broken_answer_fails_the_request(reply: bytes) -> None:
    with pytest.raises(PeerFault):
        read_have(reply, 10)
