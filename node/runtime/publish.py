"""Two-phase publication: commit to an envelope on the chain, release it after.

Copy detection alone names the *later* arrival as the copier, so a peer closer
to a validator could re-sign an honest envelope, deliver it first and get the
author rejected. Here a miner first commits to its envelope's sha256 on the
contract, during the first `commit_phase` share of the window, and announces
the envelope only from the release block on. The sha256 covers the envelope's
signer and signature, so nobody can commit to a copy of bytes they have not
seen; validators count an envelope only when its signer's commitment landed in
time (validator/checks.py), and the chain's block numbers are the one clock
every peer reads alike.

This module owns the miner's side only; it never decides what a validator
accepts.
"""

from __future__ import annotations

import asyncio
import hashlib

from chain.errors import ChainError
from node.runtime.aio import pause
from node.runtime.chainview import AsyncChain


async def commit_then_hold(chain: AsyncChain, window: int, wire: bytes, commit_phase: float,
                           *, poll: float, stop: asyncio.Event) -> str | None:
    """Commit to `wire` for `window` and wait for the window's release block. None when
    the envelope may now be announced, otherwise why it must not be (the commitment
    failed or landed too late, the window ended, or the node is stopping)."""
    schedule = await chain.schedule()
    release = schedule.release_block(window, commit_phase)
    digest = hashlib.sha256(wire).digest()
    try:
        if await chain.call(chain.client.block_number) + 1 >= release:
            return f"training overran the commit phase (release block {release})"
        await chain.call(chain.client.commit_contribution, window, digest)
        landed = await chain.call(chain.client.contribution_of, window, chain.address)
    except ChainError as exc:
        return f"commitment failed: {exc}"
    if landed.digest != digest or not schedule.committed_in_time(window, landed.block,
                                                                 commit_phase):
        return f"commitment landed in block {landed.block}, release block is {release}"
    while not stop.is_set():
        try:
            block = await chain.call(chain.client.block_number)
        except ChainError:
            block = -1  # keep waiting: the release block comes whether we see it or not
        if block >= release:
            last = schedule.last_block(window)
            return None if block <= last else "the window ended before the release"
        await pause(stop, poll)
    return "stopping"
