"""One rank of the sharded-encoding check (tests/integration/test_sharded_engine.py).

    python -m tests.support.codec_job RANK WORLD RENDEZVOUS DIR MODEL WINDOWS

Each window every rank reads the whole Δ the test wrote, keeps its FSDP rows of the
tensors the codec shards (the whole tensor otherwise) and encodes; rank 0 writes the
payload and, at the end, the error feedback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from node.engine.model import get_config, parameter_shapes
from node.engine.ranks import init_ranks
from node.engine.sharded_codec import ShardedSparseLoCo
from node.outer.optimizers import OuterConfig
from protocol.spec import TensorSpec


def main(rank: int, world: int, rendezvous: Path, out: Path, model: str, windows: int) -> None:
    torch.set_num_threads(1)
    init_ranks(rank, world, rendezvous)
    manifest = tuple(TensorSpec(n, s, "float32") for n, s in parameter_shapes(get_config(model)))
    codec = ShardedSparseLoCo(OuterConfig(), manifest, rank, world, "cpu")
    for w in range(windows):
        delta = load_file(str(out / f"delta-{w}.safetensors"))
        mine = []
        for i, spec in enumerate(manifest):
            whole = delta[spec.name]
            start, stop = codec.rows[i]
            mine.append(whole[start:stop] if codec.sharded[i] else whole)
        payload = codec.encode(mine)
        if rank == 0:
            assert payload is not None
            (out / f"payload-{w}.bin").write_bytes(payload)
    state = codec.local_state()
    if rank == 0:
        save_file(state, str(out / "error.safetensors"))
        (out / "sharded.json").write_text(json.dumps(codec.sharded))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    r, n, rdv, d, m, win = sys.argv[1:7]
    main(int(r), int(n), Path(rdv), Path(d), m, int(win))
