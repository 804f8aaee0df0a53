"""Blocking calls off the event loop, in threads that never hold up the process's exit."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_daemon_thread(call: Callable[[], T], *, name: str = "kube-api") -> T:
    """Run a blocking call in a daemon thread: unlike asyncio.to_thread (the default executor, whose threads
    asyncio.run and the interpreter join at exit), a hung or slow call cannot delay exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def resolve(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def hand_back(result: T | None, error: BaseException | None) -> None:
        # RuntimeError: the loop closed while the call ran; the process is exiting and nobody waits.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(resolve, result, error)

    def target() -> None:
        try:
            result = call()
        except BaseException as exc:  # handed to the awaiting coroutine
            hand_back(None, exc)
        else:
            hand_back(result, None)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future
