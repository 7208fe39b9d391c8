"""Blocking work (the database, Redis on a miss) run off the event loop, one hop at a time.

Starlette's ``run_in_threadpool`` goes through anyio, which on every call works out which
async library is running, opens a cancel scope and takes a capacity limiter: about as much
event-loop time as a small route's own work. This is the same hop straight through asyncio:
the caller's context (the request id bound for logs) goes along, at most :data:`THREADS`
calls run at once (anyio's default too), and a cancelled caller still waits for the thread
to finish before the cancellation goes on, as with anyio — a command half-done in a thread
must not look abandoned to the middleware that holds its idempotency claim.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

#: Threads for blocking calls per API process (anyio's default limit).
THREADS = 40

_pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="concord-api")


async def in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, with the caller's context variables."""
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    call: Callable[[], T] = partial(fn, *args, **kwargs)
    future = loop.run_in_executor(_pool, context.run, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if not future.done():
            await asyncio.wait((future,))
        raise
