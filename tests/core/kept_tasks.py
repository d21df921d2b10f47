"""Checks that nothing keeps a task alive after it ended (shared by the core's tests)."""

from __future__ import annotations

import asyncio
import gc
import weakref

from rhapsody import ComputeTask


class TrackedTask(ComputeTask):
    """A ComputeTask that can be weakly referenced (ComputeTask itself has no __weakref__ slot)."""


async def still_alive(refs: list[weakref.ref[TrackedTask]], *, within: float = 5.0) -> list[str]:
    """Collect until every referent is gone or ``within`` seconds passed; the uids still alive.

    A pool thread lets go of its chunk a moment after reporting the chunk's last task, so the
    check waits (bounded) for that; a task that something keeps stays past the bound.
    """
    deadline = asyncio.get_running_loop().time() + within
    while True:
        gc.collect()
        alive = [task["uid"] for task in (ref() for ref in refs) if task is not None]
        if not alive or asyncio.get_running_loop().time() >= deadline:
            return alive
        await asyncio.sleep(0.01)
