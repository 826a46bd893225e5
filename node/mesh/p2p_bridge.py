"""The asyncio <-> trio bridge of `P2PMesh`: py-libp2p runs on trio in a thread of its
own (`run_trio_thread`), and asyncio code reaches it only through `call_in_trio`.

`call_in_trio` schedules a trio task and awaits an asyncio future that the task
resolves with `call_soon_threadsafe`; cancelling the asyncio side cancels the trio
task, which also has its own deadline. Owns no state of the mesh; never blocks the
asyncio loop, and a failure on the trio thread reaches the caller as a `MeshError`
instead of ending the interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from node.mesh.errors import MeshError, MeshStateError, MeshTimeoutError

log = logging.getLogger("node.mesh.p2p")  # the mesh's logger, as its other parts


def run_trio_thread(trio_main: Callable[[Callable[[], None]], Awaitable[None]],
                    loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
    """The trio thread's body: run `trio_main(on_ready)` to its end. `ready` resolves
    when `trio_main` calls `on_ready`, or fails with a `MeshError` if trio ends first."""
    def resolve(exc: BaseException | None) -> None:
        if ready.done():
            return
        if exc is None:
            ready.set_result(None)
        else:
            ready.set_exception(exc)

    try:
        trio.run(trio_main, lambda: loop.call_soon_threadsafe(resolve, None))
        # py-libp2p 0.8.1 can drop a socket of a connection torn down while it was being
        # dialled or upgraded; reclaim those here instead of at a random later gc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    except BaseException as exc:  # report a failed start; never kill the interpreter
        log.warning("libp2p thread ended: %r", exc)
        err = exc if isinstance(exc, MeshError) else MeshError(f"libp2p failed: {exc!r}")
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(resolve, err)


def _settler(fut: asyncio.Future[Any]) -> Callable[[Any, BaseException | None], None]:
    def settle(value: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    return settle


async def call_in_trio(token: trio.lowlevel.TrioToken, nursery: trio.Nursery,
                       fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float) -> Any:
    """`await fn(*args)` as a task of `nursery` on the trio thread, from asyncio: its
    value or its exception; `MeshTimeoutError` once `timeout` s pass, `MeshStateError`
    if trio has ended."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()
    settle = _settler(fut)
    scopes: list[trio.CancelScope] = []

    async def runner() -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            scope.deadline = trio.current_time() + timeout
            try:
                value = await fn(*args)
            except Exception as exc:
                loop.call_soon_threadsafe(settle, None, exc)
                return
            loop.call_soon_threadsafe(settle, value, None)
            return
        loop.call_soon_threadsafe(settle, None, MeshTimeoutError(
            f"{getattr(fn, '__name__', 'call')} did not finish within {timeout}s"))

    try:
        token.run_sync_soon(nursery.start_soon, runner)
    except trio.RunFinishedError as exc:
        raise MeshStateError("mesh stopped") from exc
    try:
        return await fut
    except asyncio.CancelledError:
        if scopes:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(scopes[0].cancel)
        raise
