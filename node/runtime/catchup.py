"""Bring a node to the network's θ: from a checkpoint, then replay window by window.

1. Read every registered miner's head record; the newest checkpoint among them
   (or this node's own local one, if newer) is the starting point (in a run with a
   public second moment, this node's own first: see `catch_up`). A remote
   checkpoint's manifest is signed by the miner whose head named it, and each
   chunk and the assembled parameters are hash-checked.
2. For each window since, take the window record most miners agree on, fetch
   the envelopes it lists (from any holder), apply the same outer step and
   check that θ's digest equals the record's. In a run with a public second
   moment, the public batch of the window that trains from θ (that window plus
   the lag) is folded first, as if this node had trained it: a local checkpoint
   keeps the estimate, so the node comes back with the one its peers hold.
3. Stop at the first window nobody has applied yet: the node holds θ at its start.

With no checkpoint anywhere (a new network) the node starts from θ_init at the
next window. Every failure is a typed `CatchUpError`; the caller retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import torch

from node.engine.base import Engine
from node.errors import CheckpointError, EngineError, NodeError
from node.mesh.base import Mesh
from node.mesh.errors import FetchError, MeshError
from node.outer.step import select
from node.runtime.checkpoint import CheckpointManifest, restore_params
from node.runtime.records import BadRecordValueError, HeadRecord, WindowRecord, head_key, window_key
from protocol.envelope import Expectation
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.spec import Manifest

log = logging.getLogger(__name__)


class CatchUpError(NodeError):
    """The node could not reach the network's θ (yet)."""


@dataclass(frozen=True)
class CatchUpInputs:
    """What catch-up reads: the run, this node's identity, the registered miners, the
    mesh and the chain's clock; the engine is the one thing it changes."""

    run: str
    model: str
    own_address: bytes
    miners: tuple[bytes, ...]  # registered miners' addresses
    mesh: Mesh
    engine: Engine
    window: Callable[[], Awaitable[int]]  # the chain's current window
    expectation: Callable[[int, Manifest], Expectation]
    manifest_digest: bytes
    use_local: bool = True  # False after a divergence: our own checkpoints are suspect
    fetch_timeout: float = 20.0
    record_timeout: float = 5.0
    limits: Limits = DEFAULT_LIMITS
    # a window's public batch and first step, in a run with a public second moment
    public_batch: Callable[[int], tuple[torch.Tensor, int]] | None = None
    lag: int = 0  # windows between training a window and applying it (the run's overlap)


@dataclass
class CatchUpResult:
    text: str  # a one-line account of what was done
    window: int  # θ is θ_global at the start of this window
    applied: int  # the last window applied
    fresh: bool  # started from θ_init
    heads: dict[bytes, HeadRecord] = field(default_factory=dict)


async def _dial(mesh: Mesh, head: HeadRecord) -> None:
    for addr in head.addrs:
        try:
            await mesh.connect(addr, timeout=5.0)
            return
        except (MeshError, TimeoutError, OSError) as exc:
            log.debug("dial %s: %s", addr, exc)


async def read_heads(inp: CatchUpInputs) -> dict[bytes, HeadRecord]:
    heads: dict[bytes, HeadRecord] = {}
    for address in inp.miners:
        if address == inp.own_address:
            continue
        raw = await inp.mesh.get_record(head_key(inp.run, address), timeout=inp.record_timeout)
        if raw is None:
            continue
        try:
            heads[address] = HeadRecord.decode(raw)
        except BadRecordValueError as exc:
            log.warning("head of 0x%s: %s", address.hex(), exc)
    for head in heads.values():
        await _dial(inp.mesh, head)
    return heads


async def _fetch(inp: CatchUpInputs, sha: bytes, holders: list[str]) -> bytes:
    failures: list[str] = []
    for peer in holders:
        try:
            return await inp.mesh.fetch((peer, sha), timeout=inp.fetch_timeout)
        except FetchError as exc:
            failures.append(f"{peer[:12]}: {exc}")
    raise CatchUpError(f"no holder served {sha.hex()[:16]}: {'; '.join(failures)}")


async def _remote_checkpoint(inp: CatchUpInputs, signer: bytes, head: HeadRecord
                             ) -> list[torch.Tensor]:
    raw = await _fetch(inp, head.checkpoint_sha256, [head.peer_id])
    try:
        manifest = CheckpointManifest.decode(raw)
        manifest.expect(run=inp.run, model=inp.model, manifest_digest=inp.manifest_digest,
                        signers={signer})
        if manifest.window != head.checkpoint_window:
            raise CatchUpError("checkpoint manifest window differs from its head record")
        chunks = [await _fetch(inp, h, [head.peer_id]) for h in manifest.chunk_hashes]
        return await asyncio.to_thread(restore_params, manifest, chunks, inp.engine.manifest)
    except CheckpointError as exc:
        raise CatchUpError(f"checkpoint from 0x{signer.hex()}: {exc}") from exc


async def _start_point(inp: CatchUpInputs, heads: dict[bytes, HeadRecord], prefer_local: bool
                       ) -> tuple[int, str, bool]:
    """Load the starting θ into the engine: (its window, an account, from θ_init?). The
    newest checkpoint, or with `prefer_local` this node's own if it has one."""
    engine = inp.engine
    local = await asyncio.to_thread(engine.latest_local) if inp.use_local else None
    remote = [(h.checkpoint_window, a, h) for a, h in heads.items() if h.checkpoint_sha256]
    best = max(remote, key=lambda r: r[0], default=None)
    if best is not None and (local is None or (best[0] > local.window and not prefer_local)):
        params = await _remote_checkpoint(inp, best[1], best[2])
        try:
            await asyncio.to_thread(engine.load_params, params)
        except EngineError as exc:
            raise CatchUpError(f"checkpoint from 0x{best[1].hex()}: {exc}") from exc
        return best[0], f"checkpoint of window {best[0]} from 0x{best[1].hex()[:8]}", False
    if local is not None:
        await asyncio.to_thread(engine.restore_local, local)
        return local.window, f"local checkpoint of window {local.window}", False
    # a new network: nobody trains in the window already under way (nobody saw it begin),
    # so θ_init is θ at the start of the next one, for every node that starts now
    window = await inp.window() + 1
    await asyncio.to_thread(engine.reset)
    return window, f"θ_init at window {window}", True


async def _window_consensus(inp: CatchUpInputs, window: int, heads: dict[bytes, HeadRecord]
                            ) -> WindowRecord | None:
    found: list[WindowRecord] = []
    for address, head in heads.items():
        if head.applied_window < window:
            continue
        raw = await inp.mesh.get_record(window_key(inp.run, window, address),
                                        timeout=inp.record_timeout)
        try:
            record = WindowRecord.decode(raw) if raw is not None else None
        except BadRecordValueError:
            record = None
        if record is not None and record.window == window:
            found.append(record)
    if not found:
        return None
    votes = Counter((r.digest_after, r.inputs) for r in found)
    (digest, inputs), _ = votes.most_common(1)[0]
    return WindowRecord(window, digest, inputs)


async def _replay(inp: CatchUpInputs, record: WindowRecord, heads: dict[bytes, HeadRecord],
                  holders: list[str]) -> None:
    envelopes = []
    for signer, sha in record.inputs:
        signer_peer = [h.peer_id for a, h in heads.items() if a == signer]
        envelopes.append(await _fetch(inp, sha, signer_peer + holders))
    expect = inp.expectation(record.window, inp.engine.manifest)
    chosen, skipped = select(envelopes, expect, {s for s, _ in record.inputs}, inp.limits)
    if skipped:
        raise CatchUpError(f"window {record.window}: {len(skipped)} listed envelopes invalid")
    if inp.public_batch is not None:  # θ before this step is θ of window + lag
        batch, first_step = inp.public_batch(record.window + inp.lag)
        await asyncio.to_thread(inp.engine.fold_public, batch, first_step)
    await asyncio.to_thread(inp.engine.apply, chosen)
    if await asyncio.to_thread(inp.engine.digest) != record.digest_after:
        raise CatchUpError(f"window {record.window}: replayed θ differs from the record")


async def catch_up(inp: CatchUpInputs) -> CatchUpResult:
    """Bring `inp.engine` to the network's θ; the result says where it now stands. In a
    run with a public second moment the node's own checkpoint is tried first even when a
    peer's is newer: it keeps the estimate and the replays fold the windows since (a
    peer's checkpoint carries θ alone). If that fails, the newest checkpoint is taken."""
    heads = await read_heads(inp)
    if inp.public_batch is not None and inp.use_local:
        newest = max((h.checkpoint_window for h in heads.values() if h.checkpoint_sha256),
                     default=-1)
        try:
            result = await _from_start(inp, heads, prefer_local=True)
            if result.window >= newest:
                return result
            log.info("the local checkpoint's replays stop at window %d, before the newest "
                     "checkpoint's %d: from that", result.window, newest)
        except CatchUpError as exc:
            log.info("catch-up from the local checkpoint failed (%s): from the newest", exc)
    return await _from_start(inp, heads, prefer_local=False)


async def _from_start(inp: CatchUpInputs, heads: dict[bytes, HeadRecord], prefer_local: bool
                      ) -> CatchUpResult:
    window, start, fresh = await _start_point(inp, heads, prefer_local)
    holders = [h.peer_id for h in heads.values()]
    replayed = 0
    while True:
        record = await _window_consensus(inp, window, heads)
        if record is None:
            break
        await _replay(inp, record, heads, holders)
        window += 1
        replayed += 1
    return CatchUpResult(text=f"{start}, replayed {replayed} windows, now at window {window}",
                         window=window, applied=window - 1, fresh=fresh, heads=heads)
