"""Shared by the Dragon test modules: whether this process runs inside a Dragon runtime, and the
conformance kit as both function modes run it."""

from __future__ import annotations

import os
import time
from typing import Any

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
