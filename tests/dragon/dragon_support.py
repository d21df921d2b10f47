"""Shared by the Dragon test modules: whether this process runs inside a Dragon runtime, a session
on a Dragon backend driven from a plain test, and the conformance kit as both function modes run
it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import rhapsody
from rhapsody.testing import BackendConformance


def runtime_missing() -> str:
    """Why the runtime tests cannot run here ("" when they can)."""
    try:
        from dragon.infrastructure.parameters import this_process
    except ImportError as exc:
        return f"dragonhpc is not installed ({exc})"
    if not this_process.gs_qd:
        return "not inside a Dragon runtime: run `nox -s tests-dragon` (pytest under the dragon launcher)"
    return ""


# Batch gives one worker per physical core (half the logical CPUs), at least one.
WORKERS = max(1, (os.cpu_count() or 2) // 2)


def spinner(seconds: float) -> Any:
    """A function task that runs ``seconds`` in a pure-Python loop.

    Dragon's Batch stops a running function by raising in its thread, which takes effect between
    Python bytecodes: a loop, not one long time.sleep(). The function is made inside this one so
    that cloudpickle ships it by value (workers cannot import the test modules).
    """
    def spin() -> int:
        deadline = time.monotonic() + seconds
        turns = 0
        while time.monotonic() < deadline:
            turns += 1
        return turns

    return spin


class DragonKit(BackendConformance):
    """What both modes share: Dragon spells cwd and env in the process template."""

    backend_name = "dragon"
    # Executables run on the Batch, at about 3-5 tasks/s on a 2-core machine.
    queue_fill = 2 * WORKERS + 1
    task_timeout = 180.0
    # A second Batch beside the shared one brought the whole Dragon runtime down ("fatal
    # exception") in CI runs on 2 cores; the close test closes the shared one instead.
    close_shared_session = True

    def executable_options(self, *, cwd: str | None = None, env: dict[str, str] | None = None,
                           shell: bool | None = None) -> dict[str, Any]:
        # On Dragon, cwd and env belong to the process template.
        options: dict[str, Any] = {}
        template = {key: value for key, value in (("cwd", cwd), ("env", env)) if value is not None}
        if template:
            options["process_template"] = template
        if shell is not None:
            options["shell"] = shell
        return options


class Harness:
    """A started session on one Dragon backend, and the event loop that drives it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, backend: Any, session: rhapsody.Session) -> None:
        self.loop, self.backend, self.session = loop, backend, session

    def run(self, coroutine: Any, timeout: float = 120.0) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, timeout))

    def submit_and_wait(self, tasks: list[rhapsody.ComputeTask], timeout: float = 120.0) -> None:
        async def body() -> None:
            await self.session.submit_tasks(tasks)
            await self.session.wait_tasks(tasks, timeout=timeout)

        self.run(body(), timeout + 10)


def harness(**options: Any) -> Iterator[Harness]:
    """Yield a :class:`Harness` on ``get_backend("dragon", **options)``; closed (bounded) after."""
    loop = asyncio.new_event_loop()
    try:
        backend = rhapsody.get_backend("dragon", disable_telemetry=True, **options)
        session = rhapsody.Session(backends=[backend])
        loop.run_until_complete(asyncio.wait_for(session.start(), 120))
        try:
            yield Harness(loop, backend, session)
        finally:
            loop.run_until_complete(asyncio.wait_for(session.close(), 120))
    finally:
        loop.close()
