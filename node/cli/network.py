"""`gradmesh relay`, `gradmesh dashboard` and `gradmesh devnet`."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from node.cli.common import (
    add_contract_flag,
    add_flag,
    add_node_flags,
    add_rpc_flag,
    add_run_flags,
    add_run_name_flag,
    build_chain,
    build_mesh,
    build_spec,
    host_port,
    load_identity,
    quiet_libraries,
    run_until_signal,
    serve_status,
)
from node.errors import ConfigError


# --- relay -------------------------------------------------------------------------------
def _run_relay(args: argparse.Namespace) -> int:
    quiet_libraries()
    identity = load_identity(args)
    mesh = build_mesh(args, identity, args.run, relay_service=True)

    async def main(stop: asyncio.Event) -> int:
        from node.dashboard.server import stop_server
        from node.runtime.relay_status import RelayProvider

        await mesh.start()
        runner = None
        try:
            addrs = "\n".join(mesh.dial_addrs)
            if args.addr_file:
                tmp = Path(f"{args.addr_file}.tmp")
                tmp.write_text(addrs + "\n")
                tmp.replace(args.addr_file)  # readers never see half a file
            print(json.dumps({"peer_id": mesh.peer_id, "addrs": list(mesh.dial_addrs)}),
                  flush=True)
            runner = await serve_status(args.http, RelayProvider(mesh, args.run),
                                        "gradmesh relay")
            await stop.wait()
        finally:
            if runner is not None:
                await stop_server(runner)
            await mesh.stop()
        return 0

    return run_until_signal(main)


# --- dashboard ---------------------------------------------------------------------------
def _run_dashboard(args: argparse.Namespace) -> int:
    from node.dashboard.remote import HttpSnapshotProvider

    quiet_libraries()
    if not args.node:
        raise SystemExit("gradmesh dashboard: give at least one --node URL")
    reader = None
    if args.rpc and args.contract:
        from node.runtime.chainview import read_chain_snapshot
        from node.runtime.keys import new_identity

        # a throwaway key: the dashboard only reads the chain, it never signs
        chain = build_chain(argparse.Namespace(rpc=args.rpc, contract=args.contract),
                            new_identity())

        async def reader() -> Any:
            return await read_chain_snapshot(chain)

    provider = HttpSnapshotProvider(args.node, chain_reader=reader)

    async def main(stop: asyncio.Event) -> int:
        from node.dashboard.app import make_app
        from node.dashboard.server import start_server, stop_server

        runner, url = await start_server(make_app(provider), args.http[0], args.http[1])
        print(json.dumps({"dashboard_url": url}), flush=True)
        try:
            await stop.wait()
        finally:
            await stop_server(runner)
        return 0

    return run_until_signal(main)


# --- devnet ------------------------------------------------------------------------------
def devnet_spec(args: argparse.Namespace) -> Any:
    """The run spec from the flags; with --data the devnet pins the spec to those shards
    (vocabulary, tokenizer and manifest hashes), and --tokenizer must be theirs."""
    import dataclasses
    import hashlib

    from node.engine.shards import read_manifest
    from node.runtime.runfile import pin_data

    spec = build_spec(args)
    if args.run_spec is not None:  # the file says everything
        return spec
    if args.score_warmup is None:  # a devnet runs a few windows: pay from the second one
        spec = dataclasses.replace(spec, score_warmup=1)
    if args.data is None:
        if args.tokenizer is not None:
            raise ConfigError("--tokenizer names the tokenizer of --data shards: give --data")
        return pin_data(spec)  # --init-from: its θ digest
    manifest = read_manifest(args.data)
    if args.tokenizer is not None:
        found = hashlib.sha256(args.tokenizer.read_bytes()).hexdigest()
        if found != manifest.tokenizer.sha256:
            raise ConfigError(f"{args.tokenizer} (sha256 {found}) is not the tokenizer "
                              f"{args.data} was prepared with ({manifest.tokenizer.sha256})")
    return pin_data(spec)  # the vocabulary follows the tokenizer (RunAssets pads it)


def export_devnet(devnet: Any, summary: dict[str, Any], args: argparse.Namespace) -> Path:
    """θ_global of the first miner (every node holds the same) as a Hugging Face folder."""
    from node.engine.hf import export_model

    spec = devnet.cfg.spec
    miner = devnet.miners[0]
    windows = len(summary["windows"])
    tokens = windows * devnet.cfg.miners * spec.inner_steps * spec.batch_size * spec.seq_len
    card = {"run": spec.run, "windows": windows, "training tokens (upper bound)": tokens,
            "held-out loss": summary["heldout_loss"][-1] if summary["heldout_loss"] else None,
            "contract": summary["contract"], "chain": summary["chain"],
            "θ digest": miner.digest.hex()}
    return export_model(miner.engine.full_params(), devnet.assets.model_config,
                        args.export, tokenizer_file=args.tokenizer, card=card)


def _run_devnet(args: argparse.Namespace) -> int:
    import torch

    from node.cli.report import console, progress_bar
    from node.sim.devnet import Devnet, DevnetConfig
    from node.sim.summary import devnet_tables, summarize

    # validated (ConfigError) before anything process-wide changes
    cfg = DevnetConfig(miners=args.miners, windows=args.windows, chain=args.chain,
                       late_joiner_after=args.late_joiner_after, data_dir=args.data_dir,
                       dashboard_port=args.dashboard_port, spec=devnet_spec(args),
                       block_time=args.block_time, blocks_per_window=args.blocks_per_window,
                       bf16_miners=args.bf16_miners, miner_ranks=args.miner_ranks)
    quiet_libraries(args.verbose)
    torch.set_num_threads(args.threads)
    devnet = Devnet(cfg)

    async def main(stop: asyncio.Event) -> int:
        with progress_bar("devnet windows", cfg.windows, enabled=console.is_terminal) as advance:
            def on_window(i: int) -> None:
                loss = devnet.miners[0].history[i]["heldout_loss"] if len(
                    devnet.miners[0].history) > i else None
                advance(f"held-out {loss:.3f}" if loss is not None else "")

            task = asyncio.create_task(devnet.run(stop, on_window=on_window))
            while not devnet.dashboard_url and not task.done():
                await asyncio.sleep(0.1)  # wait for the URL to print it before the bar moves
            if devnet.dashboard_url:
                console.print(f"dashboard: {devnet.dashboard_url}")
            await task
        summary = summarize(devnet)
        for table in devnet_tables(summary):
            console.print(table)
        if args.export is not None:
            console.print(f"exported θ_global to {export_devnet(devnet, summary, args)}")
        if args.json:
            print(json.dumps(summary))
        return 0

    return run_until_signal(main)


def add_network_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`relay`, `dashboard` and `devnet` (main.py registers the other groups)."""
    p = sub.add_parser("relay", help="bootstrap node and circuit relay for the mesh")
    add_node_flags(p)
    add_run_name_flag(p)
    add_flag(p, "--addr-file", env="ADDR_FILE", type=Path,
             help="write this node's multiaddrs here (for --bootstrap-file)")
    p.set_defaults(func=_run_relay)

    p = sub.add_parser("dashboard", help="one page for several nodes' status")
    add_flag(p, "--node", env="NODES", action="append",
             help="a node's status URL, e.g. http://127.0.0.1:9101 (repeatable)")
    add_flag(p, "--http", env="HTTP", type=host_port, default=("127.0.0.1", 8080),
             help="HOST:PORT to serve the dashboard on")
    add_rpc_flag(p, required=False, help="chain JSON-RPC URL (balances, windows)")
    add_contract_flag(p, required=False)
    p.set_defaults(func=_run_dashboard)

    p = sub.add_parser("devnet", help="a whole local network: chain, miners, validator, "
                                      "dashboard (all on 127.0.0.1)")
    p.add_argument("--miners", type=int, default=3)
    p.add_argument("--windows", type=int, default=6)
    p.add_argument("--late-joiner-after", type=int, default=None,
                   help="start one more miner after this many windows")
    p.add_argument("--bf16-miners", type=int, default=0,
                   help="the last N miners train with bf16 autocast (θ stays identical)")
    p.add_argument("--miner-ranks", type=int, default=1,
                   help="run miner-0 as this many FSDP2 ranks (gloo on the CPU)")
    p.add_argument("--chain", choices=("embedded", "anvil"), default="embedded")
    p.add_argument("--block-time", type=float, default=0.5)
    p.add_argument("--blocks-per-window", type=int, default=40)
    p.add_argument("--dashboard-port", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=Path("devnet-data"))
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.add_argument("--verbose", action="store_true", help="log every service's events")
    add_flag(p, "--tokenizer", env="TOKENIZER", type=Path,
             help="the tokenizer.json the --data shards were prepared with (checked, exported)")
    p.add_argument("--export", type=Path, default=None,
                   help="write θ_global at the end as a Hugging Face model folder")
    add_run_flags(p)
    p.set_defaults(func=_run_devnet)



