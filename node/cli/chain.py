"""`gradmesh chain up|deploy|status` and `gradmesh register`."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import threading
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

_UNITS = {"wei": 1, "gwei": 10**9, "ether": 10**18, "eth": 10**18}


def parse_amount(text: str) -> int:
    """'1000', '1e18', '2.5ether', '3 gwei' -> wei."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in ("", *_UNITS):
        raise argparse.ArgumentTypeError(f"not an amount: {text!r} (e.g. 1000, 1e18, 2ether)")
    from decimal import Decimal

    value = Decimal(match.group(1)) * _UNITS.get(match.group(2) or "wei", 1)
    if value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of wei")
    return int(value)


def _env(name: str) -> str | None:
    return os.environ.get(f"GRADMESH_{name}")


def _add_params(p: argparse.ArgumentParser) -> None:
    from chain.client import ChainParams

    defaults = ChainParams()
    for f in fields(ChainParams):
        default = getattr(defaults, f.name)
        p.add_argument("--" + f.name.replace("_", "-"), type=parse_amount, default=default,
                       help=f"(default {default})")
    p.add_argument("--fund", type=parse_amount, default=parse_amount("100ether"),
                   help="wei sent to the emission pool at deployment")


def _params(args: argparse.Namespace) -> Any:
    from chain.client import ChainParams

    return ChainParams(**{f.name: getattr(args, f.name) for f in fields(ChainParams)})


def add_chain_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("chain", help="local chain and contract tools")
    chain_sub = p.add_subparsers(dest="chain_command", required=True)

    up = chain_sub.add_parser("up", help="start anvil on 127.0.0.1, deploy, run until stopped")
    up.add_argument("--json", action="store_true", help='print {"rpc": ..., "contract": ...}')
    up.add_argument("--port", type=int, default=int(_env("CHAIN_PORT") or 0),
                    help="RPC port on 127.0.0.1 (default: a free one)")
    up.add_argument("--block-time", type=float, default=float(_env("BLOCK_TIME") or 0),
                    help="seconds per block (default 0: one block per transaction)")
    _add_params(up)
    up.set_defaults(func=_run_up)

    deploy = chain_sub.add_parser("deploy", help="deploy the contract to an RPC endpoint")
    deploy.add_argument("--rpc", default=_env("RPC"), required=_env("RPC") is None)
    deploy.add_argument("--key", type=Path, default=_env("KEY"), required=_env("KEY") is None)
    deploy.add_argument("--json", action="store_true")
    _add_params(deploy)
    deploy.set_defaults(func=_run_deploy)

    status = chain_sub.add_parser("status", help="windows, peers, stakes, consensus, balances")
    status.add_argument("--rpc", default=_env("RPC"), required=_env("RPC") is None)
    status.add_argument("--contract", default=_env("CONTRACT"),
                        required=_env("CONTRACT") is None)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_run_status)

    reg = sub.add_parser("register", help="register this key as a miner or validator")
    reg.add_argument("--rpc", default=_env("RPC"), required=_env("RPC") is None)
    reg.add_argument("--contract", default=_env("CONTRACT"), required=_env("CONTRACT") is None)
    reg.add_argument("--key", type=Path, default=_env("KEY"), required=_env("KEY") is None)
    reg.add_argument("--role", choices=("miner", "validator"), required=True)
    reg.add_argument("--stake", type=parse_amount, required=True, help="e.g. 1ether")
    reg.add_argument("--peer-id", default=_env("PEER_ID"), required=_env("PEER_ID") is None,
                     help="libp2p peer id to bind (text, at most 64 bytes)")
    reg.set_defaults(func=_run_register)


def _run_up(args: argparse.Namespace) -> int:
    from chain.deploy import deploy_network
    from chain.launch import AnvilChain
    from node.cli.report import console

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with AnvilChain(port=args.port or None, block_time=args.block_time or None) as anvil:
        key = anvil.accounts[0].key
        contract = deploy_network(anvil.w3, key, _params(args), fund=args.fund)
        if args.json:
            print(json.dumps({"rpc": anvil.rpc_url, "contract": contract}), flush=True)
        else:
            console.print(f"rpc       {anvil.rpc_url}\ncontract  {contract}")
            console.print("dev accounts (well-known test keys, never use them for value):")
            for account in anvil.accounts[:5]:
                console.print(f"  {account.address}  0x{bytes(account.key).hex()}")
            console.print("Ctrl-C to stop")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


def _run_deploy(args: argparse.Namespace) -> int:
    from web3 import Web3

    from chain.deploy import deploy_network
    from node.runtime.keys import load_key_file

    identity = load_key_file(args.key)
    w3 = Web3(Web3.HTTPProvider(args.rpc))
    contract = deploy_network(w3, identity.secret, _params(args), fund=args.fund)
    print(json.dumps({"rpc": args.rpc, "contract": contract}) if args.json else contract)
    return 0


def _run_register(args: argparse.Namespace) -> int:
    from chain.client import Role
    from chain.web3client import Web3ChainClient
    from node.runtime.keys import load_key_file

    identity = load_key_file(args.key)
    client = Web3ChainClient.connect(args.rpc, args.contract, identity.secret)
    role = Role.MINER if args.role == "miner" else Role.VALIDATOR
    uid = client.register(role, args.peer_id.encode(), args.stake)
    print(json.dumps({"address": client.address, "role": args.role, "uid": uid}))
    return 0


def chain_status(client: Any) -> dict[str, Any]:
    params = client.params()
    miners = client.miners()
    epoch, consensus = client.last_consensus()
    return {
        "block": client.block_number(), "window": client.current_window(),
        "epoch": client.current_epoch(), "params": asdict(params),
        "miners": [{"uid": m.uid, "address": m.address, "stake": m.stake,
                    "registered_window": m.registered_window,
                    "balance": client.balance_of(m.address)} for m in miners],
        "last_consensus": {"epoch": epoch, "weights": consensus},
        "aggregation_set": [uid for uid, _ in client.aggregation_set()],
        "emission_pool": client.emission_pool(), "carried": client.carried(),
    }  # fmt: skip


def _run_status(args: argparse.Namespace) -> int:
    from chain.web3client import Web3ChainClient
    from node.cli.report import console

    # a status read needs no key; a throwaway one satisfies the client
    client = Web3ChainClient.connect(args.rpc, args.contract, b"\x01" * 32)
    status = chain_status(client)
    if args.json:
        print(json.dumps(status))
        return 0
    console.print(f"block {status['block']} · window {status['window']} · epoch {status['epoch']}"
                  f" · pool {status['emission_pool']} wei · carried {status['carried']} wei")
    for m in status["miners"]:
        console.print(f"  miner {m['uid']:>3} {m['address']} stake {m['stake']} "
                      f"balance {m['balance']}")
    console.print(f"last consensus (epoch {status['last_consensus']['epoch']}): "
                  f"{status['last_consensus']['weights']}")
    return 0

