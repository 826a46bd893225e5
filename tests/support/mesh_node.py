"""One mesh node for namespace tests and benchmarks: `python mesh_node.py '<json config>'`.

Run by `tests.support.netns.Lab.spawn` inside a network namespace, never in the
root namespace. Speaks JSON lines on stdout (`{"event": ...}`), reads commands
(`go`, and for swarm `check` and `next`) on stdin and stops when stdin closes. Roles:

* relay: `relay_service` node; reports its dial addresses.
* holder: announces a deterministic blob (after a relay reservation when it has
  relays) until stopped.
* fetcher: fetches the first blob announced by `target` (or anyone); with
  `expect_direct` it then waits for a direct (hole-punched) connection to the
  announcer and fetches again; reports each transfer's path.
* swarm: announces its own blob, waits for `peers` announcements, says `ready`,
  fetches them all at `go`, reports the time (`done`), hashes what it fetched at
  `check` (`checked`), begins the next of `windows` at `next`, keeps serving until
  stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from node.mesh import AddressPolicy
from node.mesh.errors import FetchError
from node.mesh.p2p import P2PConfig, P2PMesh
from tests.support.keys import identity


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def make_blob(seed: int, mib: float) -> bytes:
    block = hashlib.sha256(f"blob-{seed}".encode()).digest()
    return (block * (int(mib * (1 << 20)) // 32 + 1))[: int(mib * (1 << 20))]


async def until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def job_state(job: Any) -> str:
    """One swarm fetch's bookkeeping, for the `dump` command."""
    import trio

    now = trio.current_time()
    short = {p: p[-6:] for p in {*job.views, *job.resting, *job.faulted, *job.strikes}}
    return json.dumps({
        "blob": job.ann.peer_id[-6:], "held": int(job.partial.held().sum()),
        "count": job.partial.count, "asked": {i: p[-6:] for i, p in job.asked.items()},
        "views": {short[p]: int(v.sum()) for p, v in job.views.items()},
        "resting": {short[p]: round(t - now, 1) for p, t in job.resting.items()},
        "faulted": [short[p] for p in job.faulted], "strikes": {short[p]: n for p, n in
                                                                  job.strikes.items()},
        "stuck_for": None if job.stuck_since is None else round(now - job.stuck_since, 1),
        "failures": {p[-6:]: f[:80] for p, f in job.failures.items()}})


def dump_tasks(mesh: P2PMesh) -> None:
    """Every trio task's await stack to stderr (the `dump` command: what a stalled node
    is waiting on). Runs on the trio thread."""
    import trio

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        frames = [f"{f.f_code.co_name}:{f.f_lineno}" for f, _ in task.iter_await_frames()]
        print(f"{'  ' * depth}{task.name} <- {' < '.join(reversed(frames[-6:]))}",
              file=sys.stderr)
        for f, _ in task.iter_await_frames():
            if f.f_code.co_name == "_swarm_fetch" and "job" in f.f_locals:
                print(f"{'  ' * depth}  {job_state(f.f_locals['job'])}", file=sys.stderr)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    def dump() -> None:
        walk(trio.lowlevel.current_root_task(), 0)
        sys.stderr.flush()

    trio.from_thread.run_sync(dump, trio_token=mesh._token)


def dump_both(mesh: P2PMesh) -> None:
    """The asyncio tasks' stacks (here, on the loop), then the trio tasks' (a thread)."""
    for task in asyncio.all_tasks():
        print(f"asyncio {task.get_name()}:", file=sys.stderr)
        task.print_stack(limit=8, file=sys.stderr)
    threading.Thread(target=dump_tasks, args=(mesh,)).start()


async def stdin_lines(mesh: P2PMesh | None = None) -> asyncio.Queue[str | None]:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def reader() -> None:
        for line in sys.stdin:
            if line.strip() == "dump" and mesh is not None:
                dump_tasks(mesh)
                continue
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        loop.call_soon_threadsafe(queue.put_nowait, None)

    # a daemon thread: a node that fails must exit (and its reader see EOF) even while
    # this thread still waits on stdin
    threading.Thread(target=reader, daemon=True).start()
    return queue


class Verdicts(logging.Handler):
    """Counts the mesh's verdicts on other peers (`too slow`, `faulted`), whatever the
    log level: how often honest peers were cut off is a figure of the benchmarks."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts = {"too_slow": 0, "faulted": 0}

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        for verdict, marker in (("too_slow", "too slow"), ("faulted", "faulted")):
            if message.startswith("peer %s " + marker):
                self.counts[verdict] += 1


VERDICTS = Verdicts()


def transfers(mesh: P2PMesh) -> list[dict[str, Any]]:
    return [{"peer": t.peer_id, "offset": t.offset, "nbytes": t.nbytes, "path": list(t.path),
             "relayed": t.relayed} for t in mesh.transfers]


async def main(cfg: dict[str, Any]) -> None:
    logging.basicConfig(level=cfg.get("log", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in cfg.get("debug", ()):
        logging.getLogger(name).setLevel(logging.DEBUG)
    mesh_log = logging.getLogger("node.mesh.p2p")
    mesh_log.addHandler(VERDICTS)
    if mesh_log.getEffectiveLevel() > logging.INFO:
        mesh_log.setLevel(logging.INFO)  # counted; printed from WARNING on, as before
        mesh_log.propagate = False
        loud = logging.StreamHandler(sys.stderr)
        loud.setLevel(logging.WARNING)
        loud.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        mesh_log.addHandler(loud)
    role = cfg["role"]
    config = P2PConfig(
        run=cfg.get("run", "netns"), listen_host=cfg["host"], port=cfg.get("port", 0),
        policy=AddressPolicy.of(cfg["policy"]), bootstrap=tuple(cfg.get("bootstrap", ())),
        relays=tuple(cfg.get("relays", ())), relay_service=role == "relay",
        hole_punch_after=cfg.get("hole_punch_after", 2.0),
        peer_upload_rate=cfg.get("peer_upload_rate", 0.0),
        upload_rate=cfg.get("upload_rate", 0.0), download_rate=cfg.get("download_rate", 0.0),
        max_blob_bytes=1 << 30,
        swarm=cfg.get("swarm", True))
    mesh = P2PMesh(identity(cfg["key"]), config)
    commands = await stdin_lines(mesh)
    await mesh.start()
    # `kill -USR1 <pid>`: the same dump as the `dump` command, for a node whose stdin
    # belongs to someone else (a benchmark)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, lambda: dump_both(mesh))
    try:
        if role == "relay":
            emit("up", peer_id=mesh.peer_id, dial_addrs=list(mesh.dial_addrs))
            while await commands.get() is not None:
                pass
        elif role == "holder":
            blob = make_blob(cfg["key"], cfg.get("blob_mib", 4))
            if config.relays:
                await until(lambda: mesh.circuit_addrs, 30, "a relay reservation")
            emit("up", peer_id=mesh.peer_id, circuit_addrs=list(mesh.circuit_addrs),
                 reachability=mesh.reachability, sha256=hashlib.sha256(blob).hexdigest())
            stop = asyncio.ensure_future(drain(commands))
            while not stop.done():
                await mesh.announce(1, blob)
                await asyncio.wait([stop], timeout=0.5)
            emit("stats", served=mesh.stats().blobs_served, bytes_out=mesh.stats().bytes_out)
        elif role == "fetcher":
            await fetcher(mesh, cfg)
        elif role == "swarm":
            await swarm(mesh, cfg, commands)
    except Exception as exc:
        emit("error", error=repr(exc))
        raise
    finally:
        await mesh.stop()


async def drain(commands: asyncio.Queue[str | None]) -> None:
    while await commands.get() is not None:
        pass


async def fetcher(mesh: P2PMesh, cfg: dict[str, Any]) -> None:
    if mesh._cfg.relays:
        await until(lambda: mesh.circuit_addrs, 30, "a relay reservation")
    sub = mesh.subscribe()
    async with asyncio.timeout(cfg.get("timeout", 60)):
        async for ann in sub:
            if cfg.get("target") in (None, ann.peer_id):
                break
        emit("announced", addrs=list(ann.addrs))
        started = time.monotonic()
        data = await mesh.fetch(ann, timeout=60)
        elapsed = time.monotonic() - started
        emit("fetched", ok=hashlib.sha256(data).digest() == ann.sha256, seconds=elapsed,
             mib_s=len(data) / elapsed / 2**20, reachability=mesh.reachability,
             paths=[list(p) for p in mesh.connection_paths(ann.peer_id)],
             transfers=transfers(mesh))
        if cfg.get("expect_direct"):
            await until(lambda: mesh.direct_connection(ann.peer_id) is not None,
                        cfg.get("direct_timeout", 40), "a direct connection")
            mesh.transfers.clear()
            mesh.forget(ann.window + 1)  # fetch it again, not from what we keep serving
            started = time.monotonic()
            data = await mesh.fetch(ann, timeout=60)
            elapsed = time.monotonic() - started
            emit("fetched", ok=hashlib.sha256(data).digest() == ann.sha256, seconds=elapsed,
                 mib_s=len(data) / elapsed / 2**20,
                 direct=list(mesh.direct_connection(ann.peer_id) or ()),
                 paths=[list(p) for p in mesh.connection_paths(ann.peer_id)],
                 transfers=transfers(mesh))


async def fetch_with_retries(mesh: P2PMesh, ann: Any, retries: int = 2) -> bytes:
    """As the daemons' gatherer fetches (node/runtime/gather.py): a failed fetch is tried
    again after 1 s, then 2 s."""
    for attempt in range(retries + 1):
        try:
            return await mesh.fetch(ann, timeout=600)
        except FetchError:
            if attempt == retries:
                raise
            emit("retry", peer=ann.peer_id, attempt=attempt + 1)
        await asyncio.sleep(2.0**attempt)
    raise AssertionError("unreachable")


async def until_command(commands: asyncio.Queue[str | None], wanted: str) -> bool:
    """Wait for `wanted` on stdin; False when stdin closes first."""
    while (command := await commands.get()) != wanted:
        if command is None:
            return False
    return True


async def swarm(mesh: P2PMesh, cfg: dict[str, Any],
                commands: asyncio.Queue[str | None]) -> None:
    """`windows` rounds (default 1) over the same mesh and connections: in each, a new
    blob announced under window w until `go`, then every other peer's blob of w
    fetched at once; "ready", "done" and "checked" carry `window`. The fetched blobs
    are hashed again at `check`, and a window after the first begins at `next`, so
    that no node hashes while others still fetch."""
    seen: dict[int, dict[str, Any]] = {}

    async def collect() -> None:
        async for ann in mesh.subscribe():
            seen.setdefault(ann.window, {}).setdefault(ann.peer_id, ann)

    task = asyncio.ensure_future(collect())
    closed = False  # stdin closed while a command was awaited: nothing left to drain
    for window in range(1, cfg.get("windows", 1) + 1):
        if window > 1 and not await until_command(commands, "next"):
            closed = True
            break
        if not await swarm_window(mesh, cfg, commands, window, seen):
            closed = True
            break
    if not closed:
        await drain(commands)  # keep serving until told to stop
    task.cancel()


async def swarm_window(mesh: P2PMesh, cfg: dict[str, Any], commands: asyncio.Queue[str | None],
                       window: int, seen: dict[int, dict[str, Any]]) -> bool:
    """One window of `swarm`; False when stdin closed before its `go`."""
    blob = make_blob(cfg["key"] + 1000 * (window - 1), cfg.get("blob_mib", 10))
    anns = seen.setdefault(window, {})

    async def keep_announcing() -> None:  # gossip meshes form late: repeat until `go`
        while True:
            await mesh.announce(window, blob)
            await asyncio.sleep(0.5)

    announcer = asyncio.ensure_future(keep_announcing())
    try:
        await until(lambda: len(anns) >= cfg["peers"] - 1, cfg.get("timeout", 120),
                    f"{cfg['peers'] - 1} announcements of window {window}")
        emit("ready", peer_id=mesh.peer_id, window=window)
        if not await until_command(commands, "go"):
            return False
    finally:
        announcer.cancel()
    started, cpu = time.monotonic(), time.process_time()
    bytes_in, verdicts = mesh.stats().bytes_in, dict(VERDICTS.counts)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    finished: dict[str, float] = {}  # announcer's peer id (its end) -> seconds

    async def timed(ann: Any) -> bytes:
        blob = await fetch_with_retries(mesh, ann)
        finished[ann.peer_id[-6:]] = round(time.monotonic() - started, 2)
        return blob

    # every half second: MiB received and CPU-s used so far (is a late node late from
    # the start, or slow throughout; busy, or waiting?)
    progress: list[tuple[float, float]] = []

    async def sample() -> None:
        while True:
            await asyncio.sleep(0.5)
            progress.append((round((mesh.stats().bytes_in - bytes_in) / 2**20, 1),
                             round(time.process_time() - cpu, 2)))

    sampler = asyncio.ensure_future(sample())
    try:
        results = await asyncio.gather(*(timed(a) for a in anns.values()))
    finally:
        sampler.cancel()
    elapsed = time.monotonic() - started
    digests = {a.sha256 for a in anns.values()}
    emit("done", window=window, seconds=elapsed,  # figures of this window alone
         blobs_s=finished,  # when each fetch ended, by announcer
         progress=progress,  # (MiB in, CPU-s) every 0.5 s from `go`
         # each piece answer's wait for its first byte, ms (`Transfer.first_byte_s`)
         first_byte_ms=[round(t.first_byte_s * 1e3) for t in mesh.transfers
                        if t.sha256 in digests and t.first_byte_s is not None],
         bytes_in=mesh.stats().bytes_in - bytes_in, cpu_s=time.process_time() - cpu,
         page_faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
         **{k: n - verdicts[k] for k, n in VERDICTS.counts.items()})
    # the blobs checked once every node is done (`check`): hashing 7 x 19 MiB while
    # others still fetch would take their CPU and count in this node's
    if not await until_command(commands, "check"):
        return False
    emit("checked", window=window, ok=all(
        hashlib.sha256(r).digest() == a.sha256
        for r, a in zip(results, anns.values(), strict=True)))
    return True


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
