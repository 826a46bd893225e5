"""`gradmesh chain up|deploy|status` and `gradmesh register`."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from node.cli.common import (
    add_contract_flag,
    add_flag,
    add_key_flag,
    add_rpc_flag,
    cli_chain_client,
    cli_web3,
    parse_amount,
)

__all__ = ["add_chain_commands", "chain_status", "parse_amount"]


def _add_params(p: argparse.ArgumentParser) -> None:
    from chain.client import ChainParams

    defaults = ChainParams()
    for f in fields(ChainParams):
        default = getattr(defaults, f.name)
        p.add_argument("--" + f.name.replace("_", "-"), type=parse_amount, default=default,
                       help=f"(default {default})")
    p.add_argument("--fund", type=parse_amount, default=parse_amount("100ether"),
                   help="wei sent to the emission pool at deployment")
    p.add_argument("--run-spec", type=Path,
                   help="record this run spec file's sha256 (gradmesh run init); nodes with "
                        "another spec refuse to start")


def _spec_hash(args: argparse.Namespace) -> bytes:
    from node.runtime.runfile import NO_SPEC, read_run_file, spec_sha256

    return NO_SPEC if args.run_spec is None else spec_sha256(read_run_file(args.run_spec))


def _params(args: argparse.Namespace) -> Any:
    from chain.client import ChainParams

    return ChainParams(**{f.name: getattr(args, f.name) for f in fields(ChainParams)})


def add_chain_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("chain", help="local chain and contract tools")
    chain_sub = p.add_subparsers(dest="chain_command", required=True)

    up = chain_sub.add_parser("up", help="start anvil on 127.0.0.1, deploy, run until stopped")
    up.add_argument("--json", action="store_true", help='print {"rpc": ..., "contract": ...}')
    add_flag(up, "--port", env="CHAIN_PORT", type=int, default=0,
             help="RPC port on 127.0.0.1 (default: a free one)")
    add_flag(up, "--block-time", env="BLOCK_TIME", type=float, default=0.0,
             help="seconds per block (default 0: one block per transaction)")
    _add_params(up)
    up.set_defaults(func=_run_up)

    deploy = chain_sub.add_parser("deploy", help="deploy the contract to an RPC endpoint")
    add_rpc_flag(deploy, required=True)
    add_key_flag(deploy, required=True, help="deployer key file")
    deploy.add_argument("--json", action="store_true")
    _add_params(deploy)
    deploy.set_defaults(func=_run_deploy)

    status = chain_sub.add_parser("status", help="windows, peers, stakes, consensus, balances")
    add_rpc_flag(status, required=True)
    add_contract_flag(status, required=True)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_run_status)

    reg = sub.add_parser("register", help="register this key as a miner or validator")
    add_rpc_flag(reg, required=True)
    add_contract_flag(reg, required=True)
    add_key_flag(reg, required=True)
    reg.add_argument("--role", choices=("miner", "validator"), required=True)
    reg.add_argument("--stake", type=parse_amount, required=True, help="e.g. 1ether")
    add_flag(reg, "--peer-id", env="PEER_ID", required=True,
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
        contract = deploy_network(anvil.w3, key, _params(args), fund=args.fund,
                                  run_spec=_spec_hash(args))
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
    from chain.deploy import deploy_network
    from node.runtime.keys import load_key_file

    identity = load_key_file(args.key)
    w3 = cli_web3(args.rpc)
    contract = deploy_network(w3, identity.secret, _params(args), fund=args.fund,
                              run_spec=_spec_hash(args))
    print(json.dumps({"rpc": args.rpc, "contract": contract}) if args.json else contract)
    return 0


def _run_register(args: argparse.Namespace) -> int:
    from chain.client import Role
    from node.runtime.keys import load_key_file

    identity = load_key_file(args.key)
    client = cli_chain_client(args.rpc, args.contract, identity.secret, sends=True)
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
        "run_spec_sha256": client.run_spec_hash().hex(),
        "miners": [{"uid": m.uid, "address": m.address, "stake": m.stake,
                    "registered_window": m.registered_window,
                    "balance": client.balance_of(m.address)} for m in miners],
        "last_consensus": {"epoch": epoch, "weights": consensus},
        "aggregation_set": [uid for uid, _ in client.aggregation_set()],
        "emission_pool": client.emission_pool(), "carried": client.carried(),
    }  # fmt: skip


def _run_status(args: argparse.Namespace) -> int:
    from node.cli.report import console

    # a status read needs no key; a throwaway one satisfies the client
    client = cli_chain_client(args.rpc, args.contract, b"\x01" * 32)
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

