"""One rank of a sharded miner for tests/integration/test_sharded_engine.py.

    python -m tests.support.sharded_job RANK WORLD RENDEZVOUS DIR MODEL WINDOWS

Rank 0 leads: per window it trains on the batches the test wrote, encodes, seals,
applies its own envelope with the other miner's (from DIR) and writes what it
published, the error feedback and θ's digest to DIR; the other ranks follow.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from node.engine.config import EngineConfig
from node.engine.ranks import Leader, follow, init_ranks
from node.engine.sharded import ShardedEngine
from node.outer.step import select
from protocol.envelope import BaseModel, Expectation, seal
from tests.support.keys import identity
from tests.support.sharded import RUN, engine_spec


def main(rank: int, world: int, rendezvous: Path, out: Path, model: str, windows: int) -> None:
    torch.set_num_threads(1)
    init_ranks(rank, world, rendezvous)
    engine = ShardedEngine(engine_spec(model), config=EngineConfig(device="cpu"))
    if rank:
        follow(engine)
        torch.distributed.destroy_process_group()  # not at exit: gloo's threads abort there
        return
    leader = Leader(engine)
    digests = []
    for w in range(windows):
        batches = list(load_file(str(out / f"batches-{w}.safetensors")).values())
        leader.train(batches)
        wire = seal(identity(1), run_id=RUN, window=w, base=BaseModel(w, leader.digest()),
                    codec=leader.codec, manifest=leader.manifest, payload=leader.encode())
        (out / f"own-{w}.bin").write_bytes(wire)
        other = (out / f"other-{w}.bin").read_bytes()
        chosen, _ = select([wire, other], Expectation(RUN, w, leader.codec, leader.manifest),
                           {identity(1).address, identity(2).address})
        leader.apply(chosen)
        save_file(leader.local_state(), str(out / f"error-{w}.safetensors"))
        digests.append(leader.digest().hex())
    (out / "digests.json").write_text(json.dumps(digests))
    leader.close()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    r, n, rdv, d, m, win = sys.argv[1:7]
    main(int(r), int(n), Path(rdv), Path(d), m, int(win))
