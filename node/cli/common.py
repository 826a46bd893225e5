"""Helpers every `gradmesh` command module uses: flags, logging, signals, and the
objects built from flags (run spec, identity, mesh, chain clients).

Every flag with an environment fallback is declared through `add_flag`, which
reads GRADMESH_<ENV> once, names it in --help, and waives `required` when the
variable is set. Command modules import from here, never from each other.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from node.errors import ConfigError

ENV_PREFIX = "GRADMESH_"

# one-shot commands (chain deploy/status, register): an unreachable endpoint
# answers within seconds; the daemons keep their own, longer budgets
CLI_CONNECT_TIMEOUT_S = 3.0
CLI_REQUEST_TIMEOUT_S = 15.0
CLI_UNAVAILABLE_DEADLINE_S = 2.0  # retries of a refused or timed-out request
CLI_RECEIPT_DEADLINE_S = 60.0  # a sent transaction's receipt (blocks may be slow)
DAEMON_REQUEST_TIMEOUT_S = 30.0

ParserLike = argparse.ArgumentParser | argparse._ArgumentGroup

_UNITS = {"wei": 1, "gwei": 10**9, "ether": 10**18, "eth": 10**18}


# --- flags -------------------------------------------------------------------------------
def env_name(env: str) -> str:
    """GRADMESH_<env>: the variable a flag falls back to."""
    return ENV_PREFIX + env


def split_list(text: str | None) -> list[str]:
    """'a,b,,c' -> ['a', 'b', 'c'] (comma-separated environment lists)."""
    return [t for t in (text or "").split(",") if t]


def add_flag(parser: ParserLike, *names: str, env: str | None = None,
             required: bool = False, default: Any = None, help: str | None = None,
             **kwargs: Any) -> argparse.Action:
    """Declare one flag whose default is $GRADMESH_<env> when that is set (and not empty).

    The environment value is a string, converted by the flag's `type` exactly as
    a value given on the command line (a bad one is a usage error); for
    `action="append"` it is a comma-separated list the flags add to. `required`
    means required unless the variable is set. The help text names the variable.
    """
    value = os.environ.get(env_name(env)) if env else None
    if value == "":
        value = None
    if kwargs.get("action") == "append":
        default = split_list(value) if value is not None else list(default or [])
    elif value is not None:
        default = value
    if env:
        suffix = f"[env {env_name(env)}]"
        help = f"{help} {suffix}" if help else suffix
    return parser.add_argument(*names, default=default, help=help,
                               required=required and value is None, **kwargs)


def add_rpc_flag(parser: ParserLike, *, required: bool,
                 help: str = "chain JSON-RPC URL") -> None:
    add_flag(parser, "--rpc", env="RPC", required=required, help=help)


def add_contract_flag(parser: ParserLike, *, required: bool) -> None:
    add_flag(parser, "--contract", env="CONTRACT", required=required,
             help="GradMeshNetwork contract address")


def add_key_flag(parser: ParserLike, *, required: bool, help: str = "key file") -> None:
    add_flag(parser, "--key", env="KEY", type=Path, required=required, help=help)


def add_run_name_flag(parser: ParserLike) -> None:
    add_flag(parser, "--run", env="RUN", default="devnet", help="run id")


def parse_amount(text: str) -> int:
    """'1000', '1e18', '2.5ether', '3 gwei' -> wei."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in ("", *_UNITS):
        raise argparse.ArgumentTypeError(f"not an amount: {text!r} (e.g. 1000, 1e18, 2ether)")
    value = Decimal(match.group(1)) * _UNITS.get(match.group(2) or "wei", 1)
    if value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of wei")
    return int(value)


def nonnegative(text: str) -> float:
    """A number >= 0 (a rate; 0: unknown or unlimited); an argparse type."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def host_port(text: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); an argparse type."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags every node of one run must agree on (see `build_spec`)."""
    from node.engine.model import MODEL_CONFIGS

    g = p.add_argument_group("run (every node of a run must use the same values)")
    add_flag(g, "--run-spec", env="RUN_SPEC", type=Path,
             help="the run's spec file (gradmesh run init); replaces every other run flag "
                  "but --data, and must match the hash the contract records")
    add_run_name_flag(g)
    add_flag(g, "--model", env="MODEL", choices=sorted(MODEL_CONFIGS), default="tiny")
    add_flag(g, "--seed", env="SEED", type=int, default=0)
    add_flag(g, "--inner-steps", env="INNER_STEPS", type=int, default=12)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--seq-len", type=int, default=128)
    add_flag(g, "--score-warmup", env="SCORE_WARMUP", type=int,
             help="windows a miner is scored before it earns (default 3; devnet 1)")
    add_flag(g, "--proof-of-data", env="PROOF_OF_DATA", choices=["on", "off"],
             help="let the proof of assigned data gate scores (default on; it needs "
                  "--inner-reset on to be strong, see docs/validator.md)")
    add_flag(g, "--inner-reset", env="INNER_RESET", choices=["on", "off"],
             help="fresh inner AdamW state every window, so validators can replay a "
                  "miner's training to prove its data (default on; off keeps the state, "
                  "trains faster early on and leaves only the weak loss-based proof)")
    add_flag(g, "--public-second-moment", env="PUBLIC_SECOND_MOMENT", type=float,
             help="with --inner-reset on: start each window's AdamW second moment from an "
                  "EMA with this decay (e.g. 0.9) of every window's public-batch squared "
                  "gradient, which validators replay too (default: from nothing; "
                  "docs/optimizer.md)")
    add_flag(g, "--commit-phase", env="COMMIT_PHASE", type=float,
             help="share of each window in which miners commit to their envelope's hash "
                  "on the chain before releasing it (default 0.5; 0: publish at once, "
                  "without commitments)")
    add_flag(g, "--overlap", env="OVERLAP", choices=["on", "off"],
             help="train window w + 1 while w's contributions are gathered, applying "
                  "each window's outer step one window later (default off)")
    add_flag(g, "--data", env="DATA", type=Path,
             help="prepared shards (default: the embedded standard-library corpus)")
    add_flag(g, "--vocab-size", env="VOCAB_SIZE", type=int,
             help="the model's vocabulary (default: the model config's; a BPE run sets it)")
    add_flag(g, "--init-from", env="INIT_FROM", type=Path,
             help="start from this Hugging Face Llama folder (continued pre-training; "
                  "run init pins its θ digest)")
    add_flag(g, "--tokenizer-sha256", env="TOKENIZER_SHA256",
             help="refuse data tokenized by any other tokenizer")
    add_flag(g, "--data-sha256", env="DATA_SHA256",
             help="refuse shards whose manifest hash differs")


def build_spec(args: argparse.Namespace) -> Any:
    """The `RunSpec` of the spec file (--run-spec), or of the run flags."""
    from node.runtime.runspec import RunSpec

    if getattr(args, "run_spec", None) is not None:
        from node.runtime.runfile import read_run_file

        return read_run_file(args.run_spec, data=args.data, init_from=args.init_from)
    return RunSpec(run=args.run, model=args.model, seed=args.seed, inner_steps=args.inner_steps,
                   batch_size=args.batch_size, seq_len=args.seq_len, data=args.data,
                   vocab_size=args.vocab_size, tokenizer_sha256=args.tokenizer_sha256,
                   data_sha256=args.data_sha256, init_from=args.init_from,
                   **({} if args.score_warmup is None else {"score_warmup": args.score_warmup}),
                   **({} if args.commit_phase is None else {"commit_phase": args.commit_phase}),
                   **({} if args.proof_of_data is None
                      else {"proof_of_data": args.proof_of_data == "on"}),
                   **({} if args.inner_reset is None
                      else {"inner_reset": args.inner_reset == "on"}),
                   public_second_moment=args.public_second_moment,
                   **({} if args.overlap is None else {"overlap": args.overlap == "on"}))


def add_node_flags(p: argparse.ArgumentParser) -> None:
    """Identity, chain, data folder, mesh and status-page flags of a long-running node."""
    g = p.add_argument_group("node")
    add_key_flag(g, required=False, help="key file (created if missing)")
    add_flag(g, "--dev-account", env="DEV_ACCOUNT", type=int,
             help="use well-known dev key N (local test networks only)")
    add_rpc_flag(g, required=False)
    add_contract_flag(g, required=False)
    add_flag(g, "--data-dir", env="DATA_DIR", type=Path, default=Path("gradmesh-data"),
             help="this node's state and checkpoints")
    add_flag(g, "--listen-host", env="LISTEN_HOST", default="127.0.0.1",
             help="address the mesh listens on")
    add_flag(g, "--port", env="PORT", type=int, default=0,
             help="port the mesh listens on (0: a free one)")
    add_flag(g, "--bootstrap", env="BOOTSTRAP", action="append",
             help="multiaddr with /p2p/<id> (repeatable)")
    add_flag(g, "--bootstrap-file", env="BOOTSTRAP_FILE", type=Path,
             help="file with bootstrap multiaddrs (waited for up to 120 s)")
    add_flag(g, "--allow", env="ALLOW", action="append",
             help="CIDR the mesh may dial (repeatable; default 127.0.0.0/8)")
    add_flag(g, "--uplink-mbit", env="UPLINK_MBIT", type=nonnegative, default=0.0,
             help="this node's upload rate in Mbit/s (0: unknown, unlimited): caps what "
                  "the mesh sends; pieces served at once follow it (8 when unknown, "
                  "1 to 12)")
    add_flag(g, "--downlink-mbit", env="DOWNLINK_MBIT", type=nonnegative, default=0.0,
             help="this node's download rate in Mbit/s (0: unknown): piece requests kept "
                  "open follow it (4 when unknown, up to 8)")
    add_flag(g, "--http", env="HTTP", type=host_port,
             help="HOST:PORT for this node's status page, /metrics and /healthz")
    add_flag(g, "--stake", env="STAKE", type=parse_amount, default=parse_amount("1ether"),
             help="wei to stake on registration, e.g. 1ether")
    add_flag(g, "--checkpoint-every", env="CHECKPOINT_EVERY", type=int, default=2,
             help="windows between checkpoints of θ (to this node's disk, and served to "
                  "peers that catch up); written while the next window trains, after a "
                  "snapshot between windows (docs/daemons.md)")
    add_flag(g, "--gather-grace", env="GATHER_GRACE", type=float, default=3.0,
             help="seconds after a window ends that fetches in flight may still finish")


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    """How this node computes (operator settings, not consensus): node/engine/config.py."""
    g = p.add_argument_group("engine")
    add_flag(g, "--device", env="DEVICE", default="cpu",
             help="auto, cpu, cuda or cuda:N (auto: the first GPU if any)")
    add_flag(g, "--precision", env="PRECISION", choices=["fp32", "bf16"], default="fp32",
             help="bf16: autocast for the inner forward/backward and the validator's "
                  "evaluations; weights, optimizer state and error feedback stay fp32")
    add_flag(g, "--compile", env="COMPILE", choices=["on", "off"], default="off",
             help="torch.compile every transformer block")
    add_flag(g, "--activation-checkpointing", env="ACTIVATION_CHECKPOINTING",
             choices=["on", "off"], default="off",
             help="recompute block activations in backward (less memory, ~1/3 more compute)")
    add_flag(g, "--micro-batch", env="MICRO_BATCH", type=int,
             help="rows per forward/backward; gradients accumulate to the run's batch")
    add_flag(g, "--offload-error-feedback", env="OFFLOAD_ERROR_FEEDBACK",
             choices=["on", "off"], default="off",
             help="keep SparseLoCo's error feedback in CPU memory")


def engine_config(args: argparse.Namespace) -> Any:
    """The `EngineConfig` the engine flags describe (typed error on a bad value)."""
    from node.engine.config import EngineConfig

    return EngineConfig(device=args.device, precision=args.precision,
                        compile=args.compile == "on",
                        activation_checkpointing=args.activation_checkpointing == "on",
                        micro_batch=args.micro_batch,
                        offload_error_feedback=args.offload_error_feedback == "on")


# --- process -----------------------------------------------------------------------------
def quiet_libraries(verbose: bool = True) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    # py-libp2p logs failed dials (which the mesh retries or reports itself) as errors
    for name in ("libp2p", "multiaddr", "web3", "urllib3", "aiohttp.access", "trio", "asyncio"):
        logging.getLogger(name).setLevel(logging.ERROR if verbose else logging.CRITICAL)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run `main(stop)` in a fresh loop; SIGTERM and SIGINT set `stop`."""
    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())


async def serve_status(http: tuple[str, int] | None, provider: Any, title: str) -> Any:
    """Start the status page on `http` (None: no page); returns its runner or None."""
    if http is None:
        return None
    from node.dashboard.app import make_app
    from node.dashboard.server import start_server

    runner, url = await start_server(make_app(provider, title=title), http[0], http[1])
    logging.getLogger("gradmesh").info("status page on %s", url)
    return runner


# --- objects built from flags -------------------------------------------------------------
def load_identity(args: argparse.Namespace) -> Any:
    """--dev-account N, else --key PATH (created if missing)."""
    from node.runtime.keys import load_or_create_key
    from protocol.identity import Identity

    if args.dev_account is not None:
        from chain.launch import dev_accounts

        index = int(args.dev_account)
        return Identity.from_secret(bytes(dev_accounts(index + 1)[index].key))
    if args.key is None:
        raise ConfigError("give --key PATH (or --dev-account N on a local test network)")
    return load_or_create_key(args.key)


def bootstrap_addrs(args: argparse.Namespace) -> tuple[str, ...]:
    """--bootstrap addresses plus those of --bootstrap-file (waited for up to 120 s)."""
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


def build_mesh(args: argparse.Namespace, identity: Any, run: str, **extra: Any) -> Any:
    from node.mesh.addresses import LOOPBACK, AddressPolicy
    from node.mesh.p2p import P2PConfig, P2PMesh

    policy = AddressPolicy.of(args.allow) if args.allow else LOOPBACK
    rates = {"upload_rate": args.uplink_mbit * 1e6 / 8,
             "download_rate": args.downlink_mbit * 1e6 / 8}
    return P2PMesh(identity, P2PConfig(run=run, listen_host=args.listen_host, port=args.port,
                                       bootstrap=bootstrap_addrs(args), policy=policy,
                                       **rates, **extra))


def build_chain(args: argparse.Namespace, identity: Any) -> Any:
    """The daemons' `AsyncChain` (--rpc, --contract): long-lived, it rides out outages."""
    from web3 import Web3

    from chain.web3client import Web3ChainClient
    from node.runtime.chainview import AsyncChain

    if not args.rpc or not args.contract:
        raise ConfigError("give --rpc URL and --contract ADDRESS (or GRADMESH_RPC/CONTRACT)")
    w3 = Web3(Web3.HTTPProvider(args.rpc,
                                request_kwargs={"timeout": DAEMON_REQUEST_TIMEOUT_S}))
    client = Web3ChainClient(w3, args.contract, identity.secret)
    return AsyncChain(client, kind="rpc", contract=args.contract)


def cli_web3(rpc: str) -> Any:
    """A `Web3` for a one-shot command: every request bounded, the endpoint probed once.

    Raises `ChainUnavailableError` naming `rpc` when it does not answer.
    """
    from web3 import Web3

    from chain.errors import ChainUnavailableError

    timeout = (CLI_CONNECT_TIMEOUT_S, CLI_REQUEST_TIMEOUT_S)
    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": timeout},
                                exception_retry_configuration=None))
    try:
        w3.eth.chain_id  # noqa: B018 - the probe
    except (OSError, ValueError) as exc:  # requests' errors are OSErrors; bad URLs ValueErrors
        raise ChainUnavailableError(f"RPC {rpc} unavailable ({exc})") from exc
    return w3


def cli_chain_client(rpc: str, contract: str, private_key: bytes | str, *,
                     sends: bool = False) -> Any:
    """A `Web3ChainClient` for a one-shot command; an unreachable `rpc` fails in seconds.

    With `sends`, the endpoint is probed first and the client then waits up to
    CLI_RECEIPT_DEADLINE_S for a transaction's receipt.
    """
    from chain.web3client import RetryPolicy, Web3ChainClient

    timeout = (CLI_CONNECT_TIMEOUT_S, CLI_REQUEST_TIMEOUT_S)
    quick = RetryPolicy(deadline_s=CLI_UNAVAILABLE_DEADLINE_S)
    client = Web3ChainClient.connect(rpc, contract, private_key, timeout=timeout, retry=quick)
    if not sends:
        return client
    client.block_number()  # the probe: ChainUnavailableError within seconds
    return Web3ChainClient.connect(rpc, contract, private_key, timeout=timeout,
                                   retry=RetryPolicy(deadline_s=CLI_RECEIPT_DEADLINE_S))
