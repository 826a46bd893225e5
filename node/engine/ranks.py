"""One miner over N ranks: rank 0 runs the node and leads, the others follow.

Rank 0 alone runs the runtime (mesh, chain, HTTP, signing) and holds a `Leader`:
an `Engine` whose every call is first broadcast to the followers as (method,
arguments), then run on rank 0's own `ShardedEngine`, so all ranks enter each
collective together. A follower runs `follow(engine)` until the leader closes.

Process groups use gloo (CPU) or NCCL (CUDA) with a file rendezvous and, for gloo,
the loopback interface only: nothing here listens beyond 127.0.0.1 (torchrun's own
rendezvous server listens on every interface, so the tests do not use it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import Tensor

from node.engine.config import EngineConfig
from node.engine.device import resolve_device
from node.engine.evaluator import Evaluator
from node.engine.inner import InnerConfig
from node.engine.local import EngineSpec
from node.engine.sharded import ShardedEngine
from node.engine.store import CheckpointStore, LocalCheckpoint, MetaValue
from node.errors import EngineError
from node.outer.aggregate import AggregateStats
from node.outer.optimizers import OuterConfig
from node.outer.step import Selected
from protocol.spec import CodecSpec, Manifest

log = logging.getLogger(__name__)
CLOSE = "close"


class RankError(EngineError):
    """Another rank of this miner failed or went away: the miner must stop (a restart
    resumes from the local checkpoint)."""


# a follower waits for the leader's next call through a whole window of networking
IDLE_TIMEOUT = timedelta(hours=6)


def backend_for(config: EngineConfig) -> str:
    """NCCL between GPUs, gloo on the CPU."""
    return "nccl" if resolve_device(config.device).type == "cuda" else "gloo"


def init_ranks(rank: int, world: int, rendezvous: Path, backend: str = "gloo") -> None:
    """Join the process group of one miner (file rendezvous; gloo and NCCL's bootstrap
    on the loopback interface: the ranks are one box's)."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    dist.init_process_group(backend, init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world, timeout=IDLE_TIMEOUT)


def _broadcast(message: tuple[str, tuple[Any, ...]] | None) -> tuple[str, tuple[Any, ...]]:
    box: list[Any] = [message]
    try:
        dist.broadcast_object_list(box, src=0)
    except (RuntimeError, dist.DistError) as exc:
        raise RankError(f"the ranks lost each other: {exc}") from exc
    name, args = box[0]
    return str(name), tuple(args)


class Leader:
    """Rank 0's `Engine`: broadcast the call, then make it here."""

    def __init__(self, engine: ShardedEngine) -> None:
        self.engine = engine

    def _call(self, name: str, *args: Any) -> Any:
        _broadcast((name, args))
        try:
            return getattr(self.engine, name)(*args)
        except (RuntimeError, dist.DistError) as exc:
            raise RankError(f"{name} failed across ranks: {exc}") from exc

    def close(self) -> None:
        """Release the followers (their `follow` returns)."""
        _broadcast((CLOSE, ()))

    @property
    def manifest(self) -> Manifest:
        return self.engine.manifest

    @property
    def codec(self) -> CodecSpec:
        return self.engine.codec

    @property
    def per_step(self) -> bool:
        return self.engine.per_step

    def train(self, batches: Sequence[Tensor], first_step: int | None = None,
              public: Tensor | None = None) -> list[float]:
        return list(self._call("train", list(batches), first_step, public))

    def gradient(self, batch: Tensor) -> float:
        return float(self._call("gradient", batch))

    def fold_public(self, batch: Tensor, first_step: int) -> None:
        self._call("fold_public", batch, first_step)

    def encode(self) -> bytes:
        return bytes(self._call("encode"))

    def apply(self, chosen: Sequence[Selected]) -> AggregateStats:
        stats: AggregateStats = self._call("apply", list(chosen))
        return stats

    def digest(self) -> bytes:
        return bytes(self._call("digest"))

    def evaluate(self, batches: Sequence[Tensor]) -> float:
        return float(self._call("evaluate", list(batches)))

    def sample(self, positions: Sequence[tuple[int, int]]) -> list[float]:
        return list(self._call("sample", list(positions)))

    def full_params(self) -> list[Tensor]:
        return list(self._call("full_params"))

    def load_params(self, params: Sequence[Tensor]) -> None:
        self._call("load_params", list(params))

    def reset(self) -> None:
        self._call("reset")

    def local_state(self) -> dict[str, Tensor]:
        return dict(self._call("local_state"))

    def load_local_state(self, state: Mapping[str, Tensor]) -> None:
        self._call("load_local_state", dict(state))

    def save_local(self, window: int, meta: Mapping[str, MetaValue]) -> None:
        self._call("save_local", window, dict(meta))

    def write_local(self, window: int, params: Sequence[Tensor], state: Mapping[str, Tensor],
                    meta: Mapping[str, MetaValue]) -> None:
        self.engine.write_local(window, params, state, meta)  # a file on rank 0: no collective

    def latest_local(self) -> LocalCheckpoint | None:
        return self.engine.latest_local()  # reads a file: no collective

    def restore_local(self, checkpoint: LocalCheckpoint) -> None:
        self._call("restore_local", checkpoint)

    def evaluator(self) -> Evaluator:
        return self.engine.evaluator()  # a plain scratch model on this rank


def follow(engine: ShardedEngine) -> int:
    """A follower's life: make every call the leader broadcasts until it closes; an
    `EngineError` the leader meets too (the same state everywhere) is not fatal here.
    Returns the number of calls made."""
    calls = 0
    while True:
        name, args = _broadcast(None)
        if name == CLOSE:
            return calls
        try:
            getattr(engine, name)(*args)
        except EngineError as exc:
            log.info("rank %d: %s raised %s (the leader sees it too)", dist.get_rank(), name,
                     exc)
        calls += 1


def encode_spec(spec: EngineSpec, config: EngineConfig) -> str:
    """What a follower needs to build the same engine, as JSON."""
    return json.dumps({"spec": dataclasses.asdict(spec), "config": dataclasses.asdict(config)},
                      default=str)  # paths


def decode_spec(text: str) -> tuple[EngineSpec, EngineConfig]:
    raw = json.loads(text)
    s = raw["spec"]
    inner = InnerConfig(**{**s["inner"], "betas": tuple(s["inner"]["betas"])})
    spec = EngineSpec(model=s["model"], seed=s["seed"], vocab_size=s["vocab_size"],
                      init_from=Path(s["init_from"]) if s["init_from"] else None,
                      inner=inner, outer=OuterConfig(**s["outer"]))
    return spec, EngineConfig(**raw["config"])


class RankGroup:
    """Rank 0's side of a miner over `world` ranks: start the followers (this Python,
    `-m node.engine.follower`), join the group, lead. `close()` releases and reaps
    them; a follower that exits early shows up as a `RankError` on the next call."""

    def __init__(self, world: int, spec: EngineSpec, config: EngineConfig,
                 checkpoints: Path | None = None) -> None:
        if world < 2:
            raise EngineError("a rank group needs at least 2 ranks")
        self._dir = tempfile.TemporaryDirectory(prefix="gradmesh-ranks-")
        rendezvous = Path(self._dir.name) / "rendezvous"
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
        text = encode_spec(spec, config)
        where = [] if checkpoints is None else [str(checkpoints)]  # they read, rank 0 writes
        self.followers = [subprocess.Popen([sys.executable, "-m", "node.engine.follower",
                                            str(r), str(world), str(rendezvous), text, *where],
                                           env=env) for r in range(1, world)]
        init_ranks(0, world, rendezvous, backend_for(config))
        store = CheckpointStore(checkpoints) if checkpoints is not None else None
        self.leader = Leader(ShardedEngine(spec, store, config))

    def close(self, timeout: float = 60.0) -> list[int]:
        """Release the followers, wait for them, leave the group; their exit codes."""
        try:
            self.leader.close()
        except RankError as exc:
            log.warning("closing the ranks: %s", exc)
        codes: list[int] = []
        for p in self.followers:
            try:
                codes.append(p.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        if dist.is_initialized():
            dist.destroy_process_group()
        self._dir.cleanup()
        return codes
