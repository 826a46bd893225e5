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
from node.cli.data import add_data_commands
from node.cli.evaluate import add_eval_commands
from node.cli.export import add_export_commands
from node.cli.network import add_network_commands
from node.cli.plan import add_plan_commands
from node.cli.run import add_run_commands
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
    from node.sim.simulate import SIM_SPEC as D  # the run-spec defaults, declared once there
    from protocol.spec import INDEX_CODINGS

    p = sub.add_parser("simulate", help="run an in-process swarm of miners",
                       description="N miners train one model, exchanging real signed "
                                   "envelopes through an in-memory mesh.")
    p.add_argument("--miners", type=int, default=4)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--model", choices=sorted(MODEL_CONFIGS), default=D.model)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=D.optimizer)
    p.add_argument("--index-coding", choices=INDEX_CODINGS, default=D.index_coding)
    p.add_argument("--k", type=int, default=D.k, help="entries kept per 64x64 chunk")
    p.add_argument("--inner-steps", type=int, default=D.inner_steps,
                   help="H: inner steps per window")
    p.add_argument("--batch-size", type=int, default=D.batch_size)
    p.add_argument("--seq-len", type=int, default=D.seq_len)
    p.add_argument("--inner-lr", type=float, default=D.inner_lr)
    p.add_argument("--warmup-steps", type=int, default=D.warmup_steps,
                   help="inner lr warmup (capped at run)")
    p.add_argument("--outer-lr", type=float, default=D.outer_lr,
                   help="default: 1.0 SparseLoCo, 0.7 DiLoCo")
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--eval-batches", type=int, default=D.eval_batches)
    p.add_argument("--corpus-mib", type=float, default=(D.corpus_bytes or 0) / 2**20,
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
    add_data_commands(sub)
    _add_keygen(sub)
    add_chain_commands(sub)
    add_service_commands(sub)
    add_network_commands(sub)
    add_export_commands(sub)
    add_eval_commands(sub)
    add_plan_commands(sub)
    add_run_commands(sub)
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
