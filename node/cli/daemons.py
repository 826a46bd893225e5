"""`gradmesh miner | validator`: the long-running services of a run.

Flags fall back to GRADMESH_<FLAG> environment variables (what container
images set). Each service runs in one asyncio loop; SIGTERM and SIGINT set a
stop event, the service finishes or abandons its window cleanly, flushes its
state and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from node.cli.common import (
    add_engine_flags,
    add_flag,
    add_node_flags,
    add_run_flags,
    build_chain,
    build_mesh,
    build_spec,
    engine_config,
    load_identity,
    quiet_libraries,
    run_until_signal,
    serve_status,
)


def _run_service(args: argparse.Namespace) -> int:
    from node.engine.ranks import RankError
    from node.mesh.base import DEFAULT_MAX_BLOB_BYTES
    from node.runtime.core import NodeConfig
    from node.runtime.runspec import RunAssets
    from node.runtime.service_status import ServiceProvider

    quiet_libraries()
    spec = build_spec(args)
    identity = load_identity(args)
    config = NodeConfig(name=f"{args.command}-{identity.address_hex[2:8].lower()}",
                        data_dir=args.data_dir, engine=engine_config(args),
                        checkpoint_every=args.checkpoint_every, gather_grace=args.gather_grace)
    chain = build_chain(args, identity)
    assets = RunAssets(spec)
    mesh = build_mesh(args, identity, spec.run,
                      max_blob_bytes=max(DEFAULT_MAX_BLOB_BYTES, assets.limits.max_envelope_bytes))
    group = None
    if args.command == "miner":
        from node.runtime.miner import MinerService

        if args.nproc > 1:
            from node.engine.ranks import RankGroup

            group = RankGroup(args.nproc, assets.spec.engine_spec(), config.engine,
                              checkpoints=args.data_dir / "checkpoints")
        service: Any = MinerService(config, spec, assets, identity, mesh, chain,
                                    stake=args.stake,
                                    engine=group.leader if group is not None else None)
    else:
        from validator.service import ValidatorService

        seed = args.validator_seed
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "big")
        service = ValidatorService(config, spec, assets, identity, mesh, chain, stake=args.stake,
                                   validator_seed=seed,
                                   db_path=args.data_dir / "validator.sqlite",
                                   replay_steps=args.replay_steps)

    async def main(stop: asyncio.Event) -> int:
        from node.dashboard.server import stop_server

        title = f"gradmesh {args.command}"
        runner = await serve_status(args.http, ServiceProvider(service), title)
        try:
            await service.run(stop)
        except* RankError as group_error:  # another rank died: end here, typed and clean
            raise group_error.exceptions[0] from None
        finally:
            if runner is not None:
                await stop_server(runner)
            if group is not None:
                group.close()
        return 0

    return run_until_signal(main)


def add_service_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`miner` and `validator` (main.py registers the other groups)."""
    for name, text in (("miner", "train, publish, gather and step with the network"),
                       ("validator", "score contributions and post weights to the contract")):
        p = sub.add_parser(name, help=text, description=text)
        add_node_flags(p)
        add_run_flags(p)
        add_engine_flags(p)
        if name == "miner":
            add_flag(p, "--nproc", env="NPROC", type=int, default=1,
                     help="ranks of this miner (FSDP2; one per GPU): this process is rank 0 "
                          "and starts the others")
        if name == "validator":
            add_flag(p, "--validator-seed", env="VALIDATOR_SEED", type=int,
                     help="seeds the held-out batches (keep it private; default: random)")
            add_flag(p, "--replay-steps", env="REPLAY_STEPS", type=int,
                     help="inner steps replayed per miner for the proof of assigned data "
                          "(default: all H; fewer cost less and leave a smaller margin, "
                          "docs/validator.md)")
        p.set_defaults(func=_run_service)
