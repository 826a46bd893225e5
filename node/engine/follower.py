"""A follower rank of a sharded miner: `python -m node.engine.follower RANK WORLD
RENDEZVOUS SPEC_JSON [CHECKPOINTS]` (started by `RankGroup`, node/engine/ranks.py). It builds the
same `ShardedEngine` as rank 0 and makes every call rank 0 broadcasts, until
released; a lost leader ends it with exit code 3."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch.distributed as dist

from node.engine.ranks import RankError, backend_for, decode_spec, follow, init_ranks
from node.engine.sharded import ShardedEngine
from node.engine.store import CheckpointStore

log = logging.getLogger("gradmesh.follower")


def main(argv: list[str]) -> int:
    rank, world, rendezvous, text = int(argv[0]), int(argv[1]), Path(argv[2]), argv[3]
    spec, config = decode_spec(text)
    store = CheckpointStore(Path(argv[4])) if len(argv) > 4 else None
    init_ranks(rank, world, rendezvous, backend_for(config))
    try:
        follow(ShardedEngine(spec, store, config))
    except RankError as exc:
        log.error("rank %d: %s", rank, exc)
        return 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
