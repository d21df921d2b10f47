"""What runs inside the ``concurrent`` backend's pools: a chunk of function calls, and the
bound on an ``async`` function's run time.

A process pool's workers import this module by reference to run :func:`run_pickled_chunk`; it
keeps their imports small.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

import cloudpickle

from .worker_markers import mark_chunk, mark_task, worker_marker


async def bounded(coroutine: Any, timeout: float | None) -> Any:
    """Await ``coroutine``, at most ``timeout`` seconds (``None``: no bound).

    Raises:
        TimeoutError: it ran longer (the builtin, with the bound in its message).
    """
    if timeout is None:
        return await coroutine
    try:
        return await asyncio.wait_for(coroutine, timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"the task exceeded its timeout of {timeout} s") from None


def run_pickled_chunk(markers: str, chunk_id: int, payload: bytes) -> bytes:
    """Run a chunk of function calls in a pool process; return this process's pid and the
    calls' (ok, value) pairs, cloudpickled.

    The worker's marker in ``markers`` records which task of the chunk it has started, for the
    backend to read should this process die.
    """
    results: list[tuple[bool, Any]] = []
    marker = worker_marker(markers)
    mark_chunk(marker, chunk_id)
    calls = cloudpickle.loads(payload)
    for index, (function, args, kwargs, timeout) in enumerate(calls):
        mark_task(marker, index)
        try:
            value = function(*args, **kwargs)
            if inspect.iscoroutine(value):
                value = asyncio.run(bounded(value, timeout))
            results.append((True, value))
        except BaseException as exc:  # one task's SystemExit must not lose the chunk
            results.append((False, exc))
    mark_task(marker, len(calls))
    try:
        return cloudpickle.dumps((os.getpid(), results))
    except Exception:  # fall back item by item so only the bad result fails
        safe = []
        for ok, value in results:
            try:
                cloudpickle.dumps(value)
                safe.append((ok, value))
            except Exception as exc:
                safe.append((False, RuntimeError(
                    f"the task's {'result' if ok else 'exception'} {value!r} cannot be pickled "
                    f"back from the worker process: {exc}")))
        return cloudpickle.dumps((os.getpid(), safe))
