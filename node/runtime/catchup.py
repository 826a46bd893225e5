"""Bring a node to the network's θ: from a checkpoint, then replay window by window.

1. Read every registered miner's head record; the newest checkpoint among them
   (or this node's own local one, if newer) is the starting point. A remote
   checkpoint's manifest is signed by the miner whose head named it, and each
   chunk and the assembled parameters are hash-checked.
2. For each window since, take the window record most miners agree on, fetch
   the envelopes it lists (from any holder), apply the same outer step and
   check that θ's digest equals the record's.
3. Stop at the first window nobody has applied yet: the node holds θ at its start.

With no checkpoint anywhere (a new network) the node starts from θ_init at the
next window. Every failure is a typed `CatchUpError`; the caller retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING

import torch

from node.runtime.checkpoint import CheckpointError, CheckpointManifest, restore_params
from node.errors import NodeError
from node.mesh.base import FetchError, MeshError
from node.runtime.records import BadRecordValueError, HeadRecord, WindowRecord, head_key, window_key
from node.outer.step import apply_selected, params_digest, select

if TYPE_CHECKING:
    from node.runtime.core import NodeCore

log = logging.getLogger(__name__)


class CatchUpError(NodeError):
    """The node could not reach the network's θ (yet)."""


async def _dial(core: NodeCore, head: HeadRecord) -> None:
    connect = getattr(core.mesh, "connect", None)
    for addr in head.addrs:
        if connect is None:
            return
        try:
            await connect(addr, timeout=5.0)
            return
        except (MeshError, TimeoutError, OSError) as exc:
            log.debug("dial %s: %s", addr, exc)


async def read_heads(core: NodeCore) -> dict[bytes, HeadRecord]:
    heads: dict[bytes, HeadRecord] = {}
    for address in core.miners:
        if address == core.identity.address:
            continue
        raw = await core.mesh.get_record(head_key(core.spec.run, address),
                                         timeout=core.cfg.record_timeout)
        if raw is None:
            continue
        try:
            heads[address] = HeadRecord.decode(raw)
        except BadRecordValueError as exc:
            log.warning("head of 0x%s: %s", address.hex(), exc)
    for head in heads.values():
        await _dial(core, head)
    return heads


async def _fetch(core: NodeCore, sha: bytes, holders: list[str]) -> bytes:
    failures: list[str] = []
    for peer in holders:
        try:
            return await core.mesh.fetch((peer, sha), timeout=core.cfg.fetch_timeout)
        except FetchError as exc:
            failures.append(f"{peer[:12]}: {exc}")
    raise CatchUpError(f"no holder served {sha.hex()[:16]}: {'; '.join(failures)}")


async def _remote_checkpoint(core: NodeCore, signer: bytes, head: HeadRecord
                             ) -> list[torch.Tensor]:
    raw = await _fetch(core, head.checkpoint_sha256, [head.peer_id])
    try:
        manifest = CheckpointManifest.decode(raw)
        manifest.expect(run=core.spec.run, model=core.spec.model,
                        manifest_digest=core.assets.manifest_digest(core.manifest),
                        signers={signer})
        if manifest.window != head.checkpoint_window:
            raise CatchUpError("checkpoint manifest window differs from its head record")
        chunks = [await _fetch(core, h, [head.peer_id]) for h in manifest.chunk_hashes]
        return await asyncio.to_thread(restore_params, manifest, chunks, core.manifest)
    except CheckpointError as exc:
        raise CatchUpError(f"checkpoint from 0x{signer.hex()}: {exc}") from exc


async def _start_point(core: NodeCore, heads: dict[bytes, HeadRecord]) -> str:
    local = None if core.distrust_local else await asyncio.to_thread(core.store.latest)
    remote = [(h.checkpoint_window, a, h) for a, h in heads.items() if h.checkpoint_sha256]
    best = max(remote, key=lambda r: r[0], default=None)
    if best is not None and (local is None or best[0] > local.window):
        params = await _remote_checkpoint(core, best[1], best[2])
        core.load_params(params, best[0])
        return f"checkpoint of window {best[0]} from 0x{best[1].hex()[:8]}"
    if local is not None:
        core.load_params(local.params, local.window)
        core.restore_extra(local.extra)
        return f"local checkpoint of window {local.window}"
    # a new network: nobody trains in the window already under way (nobody saw it begin),
    # so θ_init is θ at the start of the next one, for every node that starts now
    window = await core.chain.window() + 1
    core.load_params([p.detach().clone() for p in core.assets.new_model().parameters()], window)
    return f"θ_init at window {window}"


async def _window_consensus(core: NodeCore, window: int, heads: dict[bytes, HeadRecord]
                            ) -> WindowRecord | None:
    found: list[WindowRecord] = []
    for address, head in heads.items():
        if head.applied_window < window:
            continue
        raw = await core.mesh.get_record(window_key(core.spec.run, window, address),
                                         timeout=core.cfg.record_timeout)
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


async def _replay(core: NodeCore, record: WindowRecord, holders: list[str]) -> None:
    envelopes = []
    for signer, sha in record.inputs:
        signer_peer = [h.peer_id for a, h in core.heads.items() if a == signer]
        envelopes.append(await _fetch(core, sha, signer_peer + holders))
    expect = core.assets.expectation(record.window, core.manifest)
    chosen, skipped = select(envelopes, expect, {s for s, _ in record.inputs})
    if skipped:
        raise CatchUpError(f"window {record.window}: {len(skipped)} listed envelopes invalid")
    await asyncio.to_thread(apply_selected, core.params, chosen, core.manifest, core.spec.codec,
                            core.spec.outer_lr)
    digest = await asyncio.to_thread(params_digest, core.params)
    if digest != record.digest_after:
        raise CatchUpError(f"window {record.window}: replayed θ differs from the record")
    core.digest, core.applied, core.window = digest, record.window, record.window + 1


async def catch_up(core: NodeCore) -> str:
    """Sync `core` to the network; returns a one-line account of what was done."""
    await core.refresh_miners()
    heads = await read_heads(core)
    core.heads = heads
    start = await _start_point(core, heads)
    holders = [h.peer_id for h in heads.values()]
    replayed = 0
    while True:
        record = await _window_consensus(core, core.window, heads)
        if record is None:
            break
        await _replay(core, record, holders)
        replayed += 1
    return f"{start}, replayed {replayed} windows, now at window {core.window}"
