"""An in-process stand-in for the mesh: wire bytes posted per window.

The simulator's miners publish real sealed envelopes here and every miner
collects all of them, in an arrival order that may differ per reader. The
libp2p mesh replaces this in the daemons; the envelope bytes are the same.
"""

from __future__ import annotations

import random
from collections import defaultdict

from node.errors import NodeError


class DuplicatePostError(NodeError):
    """A signer posted twice for one window."""


class MemoryBoard:
    def __init__(self) -> None:
        self._posts: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        self.bytes_posted: dict[bytes, int] = defaultdict(int)

    def publish(self, window: int, signer: bytes, data: bytes) -> None:
        if signer in self._posts[window]:
            raise DuplicatePostError(f"0x{signer.hex()} already posted for window {window}")
        self._posts[window][signer] = data
        self.bytes_posted[signer] += len(data)

    def collect(self, window: int, rng: random.Random | None = None) -> list[bytes]:
        """Every post of `window`; shuffled by `rng` to model arrival order."""
        posts = list(self._posts.get(window, {}).values())
        if rng is not None:
            rng.shuffle(posts)
        return posts

    def forget(self, before_window: int) -> None:
        for window in [w for w in self._posts if w < before_window]:
            del self._posts[window]
