"""Podman access for the image tests: find the engine, build the image once per source
tree, run pods of gradmesh containers and always remove them.

The engine is, in order: $GRADMESH_CONTAINER_TOOL (a podman-compatible command or a
wrapper script), ../shared/tools/container-env.sh beside the checkout (sets podman up on
first use, builds with the host's network, CA bundle and local wheels), `podman` on PATH.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TOOL_SCRIPT = ROOT.parent / "shared" / "tools" / "container-env.sh"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
# everything the Dockerfile copies; their contents name the image (gradmesh:test-<hash>)
CONTEXT_PATHS = ("docker", "pyproject.toml", "README.md", "protocol", "node", "validator",
                 "chain")
SKIP_PARTS = {"__pycache__", "node_modules", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
IMAGE_REPO = "gradmesh"
TEST_PREFIX = "gmtest"  # names of pods, containers and volumes the tests create
BUILD_TIMEOUT_S = 1500.0


class EngineError(RuntimeError):
    """A container command failed; the message carries its output."""


@dataclass(frozen=True)
class Engine:
    """A podman-compatible command line, e.g. ("podman",) or ("bash", "container-env.sh")."""

    argv: tuple[str, ...]

    def run(self, *args: str, timeout: float = 120.0, check: bool = True,
            ) -> subprocess.CompletedProcess[str]:
        cmd = [*self.argv, *args]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                    check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise EngineError(f"timed out after {timeout:.0f}s: {shlex.join(cmd)}") from exc
        if check and result.returncode != 0:
            raise EngineError(f"exit {result.returncode}: {shlex.join(cmd)}\n"
                              f"{tail(result.stdout)}\n{tail(result.stderr)}")
        return result

    def ok(self, *args: str, timeout: float = 60.0) -> bool:
        return self.run(*args, timeout=timeout, check=False).returncode == 0


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def find_engine() -> tuple[Engine | None, str]:
    """(engine, "") or (None, why the container tests cannot run here)."""
    if os.environ.get("GRADMESH_SKIP_CONTAINERS") == "1":
        return None, "GRADMESH_SKIP_CONTAINERS=1"
    if os.environ.get("GRADMESH_CONTAINERS") != "1":
        # building the image takes ~10 minutes on 2 cores: opt in (.ci/run does)
        return None, "container image tests are opt-in: set GRADMESH_CONTAINERS=1"
    override = os.environ.get("GRADMESH_CONTAINER_TOOL")
    if override:
        argv = tuple(shlex.split(override))
        if argv and argv[0].endswith(".sh"):
            argv = ("bash", *argv)
    elif TOOL_SCRIPT.is_file():
        argv = ("bash", str(TOOL_SCRIPT))
    elif shutil.which("podman"):
        argv = ("podman",)
    else:
        return None, f"no container engine: podman not on PATH and no {TOOL_SCRIPT}"
    engine = Engine(argv)
    try:  # the first call of the wrapper script installs podman (a few minutes)
        probe = engine.run("version", "--format", "{{.Client.Version}}", timeout=600,
                           check=False)
    except EngineError as exc:
        return None, f"container engine unusable: {exc}"
    if probe.returncode != 0:
        return None, (f"container engine unusable ({shlex.join(argv)} version exit "
                      f"{probe.returncode}): {tail(probe.stderr, 5)}")
    return engine, ""


def tree_hash(root: Path = ROOT) -> str:
    """sha256 over the paths and bytes of every file the image is built from."""
    digest = hashlib.sha256()
    files: list[Path] = []
    for name in CONTEXT_PATHS:
        path = root / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in path.rglob("*") if p.is_file()
                         and not SKIP_PARTS.intersection(p.relative_to(root).parts)
                         and p.suffix != ".pyc")
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    reused: bool
    build_seconds: float


def build_image(engine: Engine, extra_args: Sequence[str] = ()) -> BuiltImage:
    """Build docker/Dockerfile as gradmesh:test-<tree hash>, unless that tag exists."""
    tree = tree_hash()
    tag = f"{IMAGE_REPO}:test-{tree[:16]}"
    if engine.ok("image", "exists", tag):
        return BuiltImage(tag, reused=True, build_seconds=0.0)
    started = time.monotonic()
    # docker format: the OCI format has no HEALTHCHECK, and podman defaults to OCI
    engine.run("build", "--format", "docker", "--label", f"gradmesh.tree={tree}",
               "-t", tag, "-f", str(DOCKERFILE), *extra_args, str(ROOT),
               timeout=BUILD_TIMEOUT_S)
    return BuiltImage(tag, reused=False, build_seconds=time.monotonic() - started)


def compose_contract() -> str:
    """The contract address docker/compose.yaml hard-codes (GRADMESH_CONTRACT)."""
    match = re.search(r'GRADMESH_CONTRACT:\s*"?(0x[0-9a-fA-F]{40})', COMPOSE_FILE.read_text())
    if match is None:
        raise AssertionError(f"no GRADMESH_CONTRACT address in {COMPOSE_FILE}")
    return match.group(1)


def cli_commands(engine: Engine, image: str) -> set[str]:
    """Subcommands `gradmesh --help` lists in the image ({simulate,data,...})."""
    text = engine.run("run", "--rm", "--network", "none", image, "--help").stdout
    match = re.search(r"\{([a-z0-9_,-]+)\}", text)
    return set(match.group(1).split(",")) if match else set()


def wait_until(what: str, probe: Callable[[], bool], deadline_s: float,
               interval_s: float = 1.0, on_timeout: Callable[[], str] = lambda: "") -> None:
    """Poll `probe` until it is true; fail after `deadline_s` with `on_timeout()`'s text."""
    deadline = time.monotonic() + deadline_s
    while True:
        if probe():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {deadline_s:.0f}s\n{on_timeout()}")
        time.sleep(interval_s)  # the poll interval of a deadline-bounded wait


@dataclass
class Pod:
    """A pod whose only interface is loopback (--network none): every container in it
    shares one network namespace, as the compose services share the chain's."""

    engine: Engine
    image: str
    name: str = field(default_factory=lambda: f"{TEST_PREFIX}-{secrets.token_hex(4)}")
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def create(self) -> None:
        self.engine.run("pod", "create", "--name", self.name, "--network", "none")

    def volume(self, role: str) -> str:
        name = f"{self.name}-{role}"
        self.engine.run("volume", "create", "--label", f"{TEST_PREFIX}={self.name}", name)
        self.volumes.append(name)
        return name

    def start(self, role: str, args: Sequence[str], env: dict[str, str] | None = None,
              volumes: Sequence[str] = (), health_cmd: Sequence[str] | None = None) -> str:
        """Start `gradmesh ARGS` detached in the pod, with its own /data volume."""
        name = f"{self.name}-{role}"
        opts = ["--detach", "--pod", self.name, "--name", name, "--init",
                "--volume", f"{self.volume(role + '-data')}:/data"]
        for key, value in (env or {}).items():
            opts += ["--env", f"{key}={value}"]
        for spec in volumes:
            opts += ["--volume", spec]
        if health_cmd is not None:
            opts += ["--health-cmd", json.dumps(list(health_cmd))]
        self.containers.append(name)
        self.engine.run("run", *opts, self.image, *args)
        return name

    def gradmesh(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`gradmesh ARGS` in a fresh short-lived container of the pod."""
        return self.engine.run("run", "--rm", "--pod", self.name, self.image, *args,
                               timeout=timeout, check=False)

    def exec(self, container: str, *args: str, timeout: float = 60.0,
             ) -> subprocess.CompletedProcess[str]:
        return self.engine.run("exec", container, *args, timeout=timeout, check=False)

    def healthy(self, container: str) -> bool:
        """Run the container's healthcheck once (what compose's service_healthy waits on)."""
        return self.engine.ok("healthcheck", "run", container, timeout=30)

    def running(self, container: str) -> bool:
        state = self.engine.run("inspect", "--format", "{{.State.Status}}", container,
                                check=False).stdout.strip()
        return state == "running"

    def logs(self, lines: int = 40) -> str:
        parts = []
        for name in self.containers:
            out = self.engine.run("logs", "--tail", str(lines), name, check=False)
            parts.append(f"--- {name} ---\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

    def remove(self) -> None:
        """Remove the pod, its containers and volumes; raise if anything is left."""
        errors = []
        pod_rm = self.engine.run("pod", "rm", "--force", "--time", "5", self.name,
                                 timeout=120, check=False)
        if pod_rm.returncode != 0 and self.engine.ok("pod", "exists", self.name):
            errors.append(f"pod rm {self.name}: {tail(pod_rm.stderr, 5)}")
        for volume in self.volumes:
            vol_rm = self.engine.run("volume", "rm", "--force", volume, check=False)
            if vol_rm.returncode != 0 and self.engine.ok("volume", "exists", volume):
                errors.append(f"volume rm {volume}: {tail(vol_rm.stderr, 5)}")
        if errors:
            raise EngineError("cleanup left things behind:\n" + "\n".join(errors))


@contextlib.contextmanager
def pod(engine: Engine, image: str) -> Iterator[Pod]:
    """A fresh pod, removed with everything in it when the block ends (even on failure)."""
    p = Pod(engine, image)
    try:
        p.create()
        yield p
    finally:
        p.remove()


def json_line(text: str) -> dict[str, Any]:
    """The last line of `text` that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise AssertionError(f"no JSON object in output:\n{tail(text)}")
