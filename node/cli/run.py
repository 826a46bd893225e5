"""`gradmesh run init`: write the run spec file every node of a run verifies.

The file names the consensus settings (node/runtime/runfile.py); deploy the
network with `gradmesh chain deploy --run-spec FILE` so the contract records its
sha256, and start every miner and validator with `--run-spec FILE`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from node.cli.common import add_run_flags, build_spec

__all__ = ["add_run_commands"]


def add_run_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="the run spec every node of a run verifies")
    run_sub = p.add_subparsers(dest="run_command", required=True)
    init = run_sub.add_parser("init", help="write a run spec file from the run flags",
                              description="Write the consensus settings of a run as one "
                                          "file; with --data, pinned to those shards.")
    init.add_argument("--out", type=Path, required=True, help="the spec file to write")
    add_run_flags(init)
    init.set_defaults(func=_run_init)


def _run_init(args: argparse.Namespace) -> int:
    from node.runtime.runfile import pin_data, write_run_file

    spec = pin_data(build_spec(args))
    digest = write_run_file(spec, args.out)
    print(json.dumps({"run_spec": str(args.out), "sha256": digest.hex()}))
    return 0
