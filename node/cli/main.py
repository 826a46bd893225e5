"""`gradmesh` command line. Flags fall back to GRADMESH_* environment variables;
everything is parsed here, once, into frozen configs handed to the services."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from chain.errors import ChainError
from node.cli.chain import add_chain_commands
from node.cli.common import add_flag, add_key_flag
from node.cli.daemons import add_service_commands
from node.cli.network import add_network_commands
from node.dashboard.errors import DashboardError
from node.errors import NodeError
from protocol.errors import ProtocolError
from validator.errors import ValidatorError

# The root error of every package: main() answers each with `gradmesh: error:` and
# exit 2 (tests/unit/test_cli_errors.py checks that every error derives from one).
ROOT_ERRORS: tuple[type[Exception], ...] = (
    NodeError, ProtocolError, ChainError, ValidatorError, DashboardError,
)


def _add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from node.engine.model import MODEL_CONFIGS
    from node.outer.optimizers import OPTIMIZERS
    from protocol.spec import INDEX_CODINGS

    p = sub.add_parser("simulate", help="run an in-process swarm of miners",
                       description="N miners train one model, exchanging real signed "
                                   "envelopes through an in-memory mesh.")
    p.add_argument("--miners", type=int, default=4)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--model", choices=sorted(MODEL_CONFIGS), default="tiny")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sparseloco")
    p.add_argument("--index-coding", choices=INDEX_CODINGS, default="fixed12")
    p.add_argument("--k", type=int, default=64, help="entries kept per 64x64 chunk")
    p.add_argument("--inner-steps", type=int, default=30, help="H: inner steps per window")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--inner-lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=20, help="inner lr warmup (capped at run)")
    p.add_argument("--outer-lr", type=float, default=None,
                   help="default: 1.0 SparseLoCo, 0.7 DiLoCo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--corpus-mib", type=float, default=16.0,
                   help="MiB of the standard-library corpus to read (0: all)")
    add_flag(p, "--data", env="DATA", type=Path,
             help="prepared shards folder (from `gradmesh data prepare`)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from node.cli.report import console, progress_bar, simulation_tables
    from node.sim.simulate import SimConfig, run_simulation

    cfg = SimConfig.build(
        miners=args.miners, rounds=args.rounds, threads=args.threads,
        model=args.model, optimizer=args.optimizer, index_coding=args.index_coding, k=args.k,
        inner_steps=args.inner_steps, batch_size=args.batch_size, seq_len=args.seq_len,
        inner_lr=args.inner_lr, warmup_steps=args.warmup_steps, outer_lr=args.outer_lr,
        seed=args.seed, eval_batches=args.eval_batches,
        corpus_bytes=int(args.corpus_mib * 2**20) or None, data=args.data,
    )
    with progress_bar("training", cfg.rounds, enabled=console.is_terminal) as advance:
        result = run_simulation(
            cfg, on_round=lambda r: advance(f"held-out {r.heldout_loss:.3f}")
        )
    summary = result.to_json()
    for table in simulation_tables(summary):
        console.print(table)
    if args.json:
        print(json.dumps(summary))
    return 0


def _add_data(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("data", help="training data tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="turn text files into token shards")
    prep.add_argument("inputs", nargs="+", type=Path, help="text files or folders")
    prep.add_argument("--out", type=Path, required=True, help="output folder")
    prep.add_argument("--shard-mib", type=float, default=64.0, help="tokens per shard, in Mi")
    prep.add_argument("--heldout-fraction", type=float, default=0.05)
    prep.add_argument("--suffix", action="append", default=None,
                      help="file suffixes to read from folders (repeatable)")
    prep.set_defaults(func=_run_data_prepare)


def _run_data_prepare(args: argparse.Namespace) -> int:
    from node.cli.report import console
    from node.engine.shards import DEFAULT_SUFFIXES, prepare_shards

    manifest = prepare_shards(args.inputs, args.out, shard_tokens=int(args.shard_mib * 2**20),
                              heldout_fraction=args.heldout_fraction,
                              suffixes=args.suffix or DEFAULT_SUFFIXES)
    for shard in manifest.shards:
        console.print(f"{shard.split:8} {shard.file:24} {shard.tokens:>12,} tokens")
    console.print(f"wrote {args.out / 'manifest.json'}")
    return 0


def _add_keygen(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keygen", help="create a secp256k1 key file (mode 0600)")
    add_key_flag(p, required=True, help="key file to create")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=_run_keygen)


def _run_keygen(args: argparse.Namespace) -> int:
    from node.runtime.keys import new_identity, write_key_file

    identity = new_identity()
    write_key_file(args.key, identity, overwrite=args.force)
    print(identity.address_hex)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradmesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_simulate(sub)
    _add_data(sub)
    _add_keygen(sub)
    add_chain_commands(sub)
    add_service_commands(sub)
    add_network_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ROOT_ERRORS as exc:
        print(f"gradmesh: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
