"""`gradmesh miner | validator | relay | dashboard | devnet`: the long-running services.

Flags fall back to GRADMESH_<FLAG> environment variables (what container
images set). Each service runs in one asyncio loop; SIGTERM and SIGINT set a
stop event, the service finishes or abandons its window cleanly, flushes its
state and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from node.errors import ConfigError


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"GRADMESH_{name}", default)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _quiet_libraries(verbose: bool = True) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    # py-libp2p logs failed dials (which the mesh retries or reports itself) as errors
    for name in ("libp2p", "multiaddr", "web3", "urllib3", "aiohttp.access", "trio", "asyncio"):
        logging.getLogger(name).setLevel(logging.ERROR if verbose else logging.CRITICAL)


def _run_until_signal(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())


# --- shared flags ------------------------------------------------------------------------
def _add_run_flags(p: argparse.ArgumentParser) -> None:
    from node.engine.model import MODEL_CONFIGS

    g = p.add_argument_group("run (every node of a run must use the same values)")
    g.add_argument("--run", default=_env("RUN", "devnet"))
    g.add_argument("--model", choices=sorted(MODEL_CONFIGS), default=_env("MODEL", "tiny"))
    g.add_argument("--seed", type=int, default=int(_env("SEED", "0") or 0))
    g.add_argument("--inner-steps", type=int, default=int(_env("INNER_STEPS", "12") or 12))
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--seq-len", type=int, default=128)
    g.add_argument("--data", type=Path, default=_env("DATA"),
                   help="prepared shards (default: the embedded standard-library corpus)")


def _spec(args: argparse.Namespace) -> Any:
    from node.runtime.runspec import RunSpec

    return RunSpec(run=args.run, model=args.model, seed=args.seed, inner_steps=args.inner_steps,
                   batch_size=args.batch_size, seq_len=args.seq_len, data=args.data)


def _add_node_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("node")
    g.add_argument("--key", type=Path, default=_env("KEY"), help="key file (created if missing)")
    g.add_argument("--dev-account", type=int, default=_env("DEV_ACCOUNT"),
                   help="use well-known dev key N (local test networks only)")
    g.add_argument("--rpc", default=_env("RPC"), help="chain JSON-RPC URL")
    g.add_argument("--contract", default=_env("CONTRACT"))
    g.add_argument("--data-dir", type=Path, default=Path(_env("DATA_DIR", "gradmesh-data") or "."))
    g.add_argument("--listen-host", default=_env("LISTEN_HOST", "127.0.0.1"))
    g.add_argument("--port", type=int, default=int(_env("PORT", "0") or 0))
    g.add_argument("--bootstrap", action="append", default=_split(_env("BOOTSTRAP")),
                   help="multiaddr with /p2p/<id> (repeatable)")
    g.add_argument("--bootstrap-file", type=Path, default=_env("BOOTSTRAP_FILE"),
                   help="file with bootstrap multiaddrs (waited for up to 120 s)")
    g.add_argument("--allow", action="append", default=_split(_env("ALLOW")),
                   help="CIDR the mesh may dial (repeatable; default 127.0.0.0/8)")
    g.add_argument("--http", type=_host_port, default=_env("HTTP"),
                   help="HOST:PORT for this node's status page, /metrics and /healthz")
    g.add_argument("--stake", default=_env("STAKE", "1ether"))


def _split(text: str | None) -> list[str]:
    return [t for t in (text or "").split(",") if t]


def _identity(args: argparse.Namespace) -> Any:
    from node.runtime.keys import load_or_create_key
    from protocol.identity import Identity

    if args.dev_account is not None:
        from chain.launch import dev_accounts

        index = int(args.dev_account)
        return Identity.from_secret(bytes(dev_accounts(index + 1)[index].key))
    if args.key is None:
        raise ConfigError("give --key PATH (or --dev-account N on a local test network)")
    return load_or_create_key(args.key)


def _bootstrap(args: argparse.Namespace) -> tuple[str, ...]:
    addrs = list(args.bootstrap)
    if args.bootstrap_file:
        deadline = time.monotonic() + 120
        path: Path = args.bootstrap_file
        while not (path.exists() and path.read_text().strip()):
            if time.monotonic() > deadline:
                raise ConfigError(f"bootstrap file {path} did not appear within 120 s")
            time.sleep(0.5)  # before the loop starts: nothing else to do meanwhile
        addrs += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return tuple(addrs)


def _mesh(args: argparse.Namespace, identity: Any, run: str, **extra: Any) -> Any:
    from node.mesh.addresses import LOOPBACK, AddressPolicy
    from node.mesh.p2p import P2PConfig, P2PMesh

    policy = AddressPolicy.of(args.allow) if args.allow else LOOPBACK
    return P2PMesh(identity, P2PConfig(run=run, listen_host=args.listen_host, port=args.port,
                                       bootstrap=_bootstrap(args), policy=policy, **extra))


def _chain(args: argparse.Namespace, identity: Any) -> Any:
    from web3 import Web3

    from chain.web3client import Web3ChainClient
    from node.runtime.chainview import AsyncChain

    if not args.rpc or not args.contract:
        raise ConfigError("give --rpc URL and --contract ADDRESS (or GRADMESH_RPC/CONTRACT)")
    w3 = Web3(Web3.HTTPProvider(args.rpc, request_kwargs={"timeout": 30}))
    client = Web3ChainClient(w3, args.contract, identity.secret)
    return AsyncChain(client, kind="rpc", contract=args.contract)


async def _serve_status(http: tuple[str, int] | None, provider: Any, title: str) -> Any:
    if http is None:
        return None
    from node.dashboard.app import make_app
    from node.dashboard.server import start_server

    runner, url = await start_server(make_app(provider, title=title), http[0], http[1])
    logging.getLogger("gradmesh").info("status page on %s", url)
    return runner


# --- miner and validator -----------------------------------------------------------------
def _run_service(args: argparse.Namespace) -> int:
    from node.cli.chain import parse_amount
    from node.runtime.core import NodeConfig
    from node.runtime.runspec import RunAssets
    from node.runtime.service_status import ServiceProvider

    _quiet_libraries()
    spec = _spec(args)
    identity = _identity(args)
    chain = _chain(args, identity)
    mesh = _mesh(args, identity, spec.run)
    config = NodeConfig(name=f"{args.command}-{identity.address_hex[2:8].lower()}",
                        data_dir=args.data_dir)
    assets = RunAssets(spec)
    stake = parse_amount(args.stake)
    if args.command == "miner":
        from node.runtime.miner import MinerService

        service: Any = MinerService(config, spec, assets, identity, mesh, chain, stake=stake)
    else:
        from validator.service import ValidatorService

        service = ValidatorService(config, spec, assets, identity, mesh, chain, stake=stake,
                                   validator_seed=args.validator_seed,
                                   db_path=args.data_dir / "validator.sqlite")

    async def main(stop: asyncio.Event) -> int:
        from node.dashboard.server import stop_server

        title = f"gradmesh {args.command}"
        runner = await _serve_status(args.http, ServiceProvider(service), title)
        try:
            await service.run(stop)
        finally:
            if runner is not None:
                await stop_server(runner)
        return 0

    return _run_until_signal(main)


def add_service_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, text in (("miner", "train, publish, gather and step with the network"),
                       ("validator", "score contributions and post weights to the contract")):
        p = sub.add_parser(name, help=text, description=text)
        _add_node_flags(p)
        _add_run_flags(p)
        if name == "validator":
            p.add_argument("--validator-seed", type=int,
                           default=int(_env("VALIDATOR_SEED", "0") or 0) or int.from_bytes(
                               os.urandom(4), "big"),
                           help="seeds the held-out batches (keep it private)")
        p.set_defaults(func=_run_service)
    from node.cli.network import add_extra_commands

    add_extra_commands(sub)
