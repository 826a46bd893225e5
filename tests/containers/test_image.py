"""The container image (docker/Dockerfile) as its users run it, with podman.

Builds the image once per source tree (gradmesh:test-<hash>, reused when it exists),
then: `--help`, non-root, the image's configuration, a chain in a loopback-only pod
read by a second container, and a small network (chain, relay, 2 miners, a validator)
that must post rewards on the contract. Opt-in with GRADMESH_CONTAINERS=1 (.ci/run
sets it); skipped when no container engine is usable, or with
GRADMESH_SKIP_CONTAINERS=1. Leftovers after a killed run: `podman pod rm -f` the pods
named gmtest-*, `podman volume prune --filter label=gmtest`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.containers.engine import (
    BuiltImage,
    Engine,
    Pod,
    build_image,
    cli_commands,
    compose_contract,
    find_engine,
    json_line,
    pod,
    wait_until,
)

ENGINE, SKIP_REASON = find_engine()
pytestmark = [
    pytest.mark.containers,
    pytest.mark.skipif(ENGINE is None, reason=SKIP_REASON or "no container engine"),
    # the first test also pays for the image build (cold: minutes)
    pytest.mark.timeout(1800),
]

RPC = "http://127.0.0.1:8545"
# 12 s windows and H = 4: two miners and a validator share the 2 cores of the machines
# here, and a miner that overruns its window publishes nothing (H = 12 took 10-17 s
# per window in the pod, so 5 s windows left the validator nothing to pay for)
CHAIN_UP = ["chain", "up", "--port", "8545", "--block-time", "1",
            "--blocks-per-window", "12", "--windows-per-epoch", "2", "--json"]
INNER_STEPS = "4"
CHAIN_HEALTH = ["python3", "/usr/local/bin/gradmesh-healthcheck", "--rpc", RPC]
NETWORK_COMMANDS = {"relay", "miner", "validator"}
REWARD_DEADLINE_S = 420.0


@pytest.fixture(scope="session")
def engine() -> Engine:
    assert ENGINE is not None
    return ENGINE


@pytest.fixture(scope="session")
def image(engine: Engine) -> BuiltImage:
    return build_image(engine)


@pytest.fixture
def loopback_pod(engine: Engine, image: BuiltImage) -> Iterator[Pod]:
    with pod(engine, image.tag) as p:
        yield p


def start_chain(p: Pod) -> tuple[str, dict[str, Any]]:
    """`chain up` in the pod; returns (container, its {"rpc", "contract"} line) once the
    image's healthcheck program sees the contract deployed."""
    contract = compose_contract()
    chain = p.start("chain", CHAIN_UP, health_cmd=[*CHAIN_HEALTH, "--contract", contract])
    wait_until("chain healthy", lambda: p.healthy(chain), 90, on_timeout=p.logs)
    info = json_line(p.engine.run("logs", chain).stdout)
    return chain, info


def test_help_exits_zero(engine: Engine, image: BuiltImage) -> None:
    result = engine.run("run", "--rm", "--network", "none", image.tag, check=False)
    assert result.returncode == 0, result.stderr
    assert "usage: gradmesh" in result.stdout
    for command in ("chain", "keygen", "register"):
        assert command in result.stdout


def test_runs_as_non_root(engine: Engine, image: BuiltImage) -> None:
    out = engine.run("run", "--rm", "--network", "none", "--entrypoint", "id", image.tag,
                     "-u").stdout
    assert int(out.strip()) != 0
    user = engine.run("image", "inspect", "--format", "{{.Config.User}}", image.tag).stdout
    assert user.strip() not in ("", "0", "root", "0:0")


def test_image_configuration(engine: Engine, image: BuiltImage) -> None:
    data = json.loads(engine.run("image", "inspect", image.tag).stdout)[0]
    config = data["Config"]
    assert config["Entrypoint"] == ["gradmesh"]
    assert config["Cmd"] == ["--help"]
    assert "/data" in config["Volumes"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["GRADMESH_KEY"] == "/data/key.json"
    assert env["GRADMESH_DATA_DIR"] == "/data"
    health = data.get("Healthcheck") or config.get("Healthcheck")  # podman / docker
    assert health, "no HEALTHCHECK: an OCI-format build drops it (podman build --format docker)"
    assert health["Test"] == ["CMD", "python3", "/usr/local/bin/gradmesh-healthcheck"]
    # anvil is in, build tools are not; libgmp (fastecdsa) loads
    probe = ("anvil --version && ! command -v gcc && ! command -v npm && "
             "python3 -c 'import fastecdsa.curve, libp2p, torch, web3'")
    result = engine.run("run", "--rm", "--network", "none", "--entrypoint", "sh", image.tag,
                        "-c", probe, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_healthcheck_without_service_is_unhealthy(engine: Engine, image: BuiltImage) -> None:
    result = engine.run("run", "--rm", "--network", "none", "--entrypoint", "python3",
                        image.tag, "/usr/local/bin/gradmesh-healthcheck", check=False)
    assert result.returncode == 1
    assert "unhealthy" in result.stderr


def test_keygen_writes_the_data_volume(loopback_pod: Pod) -> None:
    """A fresh named volume on /data is writable by the image's non-root user."""
    volume = loopback_pod.volume("keys")
    result = loopback_pod.engine.run("run", "--rm", "--network", "none", "--volume",
                                     f"{volume}:/data", loopback_pod.image, "keygen",
                                     check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("0x")


def test_chain_in_pod_and_status_from_another_container(loopback_pod: Pod) -> None:
    chain, info = start_chain(loopback_pod)
    assert info["rpc"] == RPC
    assert info["contract"] == compose_contract(), "update GRADMESH_CONTRACT in compose.yaml"
    status = loopback_pod.gradmesh("chain", "status", "--rpc", RPC, "--contract",
                                   info["contract"], "--json")
    assert status.returncode == 0, status.stderr
    state = json_line(status.stdout)
    assert state["params"]["blocks_per_window"] == 12
    assert state["params"]["windows_per_epoch"] == 2
    assert state["miners"] == []
    # blocks come on a clock (--block-time 1) without any transaction
    first = state["block"]
    wait_until("blocks on a clock", lambda: block_of(loopback_pod, chain) > first, 15,
               on_timeout=loopback_pod.logs)
    # the chain stops on SIGTERM (the compose stop signal) well within the grace period
    stop = loopback_pod.engine.run("stop", "--time", "15", chain, timeout=60, check=False)
    assert stop.returncode == 0, stop.stderr
    code = loopback_pod.engine.run("inspect", "--format", "{{.State.ExitCode}}", chain).stdout
    assert code.strip() == "0", loopback_pod.logs()


def block_of(p: Pod, chain: str) -> int:
    result = p.exec(chain, "gradmesh", "chain", "status", "--rpc", RPC, "--contract",
                    compose_contract(), "--json")
    return int(json_line(result.stdout)["block"]) if result.returncode == 0 else -1


def status_of(p: Pod, chain: str, contract: str) -> dict[str, Any] | None:
    result = p.exec(chain, "gradmesh", "chain", "status", "--rpc", RPC, "--contract",
                    contract, "--json")
    return json_line(result.stdout) if result.returncode == 0 else None


def test_network_posts_rewards(engine: Engine, image: BuiltImage, loopback_pod: Pod) -> None:
    """chain + relay + 2 miners + validator in one loopback-only pod, as in compose.yaml:
    after at least 2 windows the validator's weights have paid a miner on the contract."""
    missing = NETWORK_COMMANDS - cli_commands(engine, image.tag)
    assert not missing, f"the image's CLI has no {', '.join(sorted(missing))} command"
    p = loopback_pod
    chain, info = start_chain(p)
    contract = info["contract"]
    shared = p.volume("shared")
    common = {"GRADMESH_RPC": RPC, "GRADMESH_CONTRACT": contract, "GRADMESH_RUN": "ctest",
              "GRADMESH_INNER_STEPS": INNER_STEPS, "GRADMESH_SCORE_WARMUP": "1"}
    nodes = [
        p.start("relay", ["relay", "--dev-account", "9", "--listen-host", "127.0.0.1",
                          "--port", "4001", "--http", "127.0.0.1:9109",
                          "--addr-file", "/shared/relay.addr"],
                env={**common, "GRADMESH_HTTP_PORT": "9109"}, volumes=[f"{shared}:/shared"]),
    ]
    wait_until("relay healthy", lambda: p.healthy(nodes[0]), 120, on_timeout=p.logs)
    for role, account, port in (("miner", 1, 4011), ("miner", 2, 4012),
                                ("validator", 3, 4021)):
        http = port + 5100  # 9111, 9112, 9121
        nodes.append(p.start(
            f"{role}{account}",
            [role, "--dev-account", str(account), "--listen-host", "127.0.0.1",
             "--port", str(port), "--http", f"127.0.0.1:{http}",
             "--bootstrap-file", "/shared/relay.addr", "--data-dir", "/data",
             "--stake", "1ether"],
            env={**common, "GRADMESH_HTTP_PORT": str(http)}, volumes=[f"{shared}:/shared:ro"],
        ))
    for node in nodes:
        wait_until(f"{node} healthy", functools.partial(p.healthy, node), 180,
                   on_timeout=p.logs)

    start = status_of(p, chain, contract)
    assert start is not None, p.logs()
    seen: dict[str, Any] = {}

    def rewarded() -> bool:
        dead = [n for n in nodes if not p.running(n)]
        if dead:
            raise AssertionError(f"exited: {dead}\n{p.logs()}")
        state = status_of(p, chain, contract)
        if state is None:
            return False
        seen.update(state)
        return (state["window"] >= start["window"] + 2 and len(state["miners"]) >= 2
                and any(m["balance"] > 0 for m in state["miners"]))

    wait_until("a miner's claimable balance > 0 after >= 2 windows", rewarded,
               REWARD_DEADLINE_S, interval_s=2.0,
               on_timeout=lambda: f"last status: {json.dumps(seen)}\n{p.logs()}")
