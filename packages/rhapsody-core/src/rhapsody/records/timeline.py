"""Timings: the wall-clock time each task entered each state, stamped once per hand-over.

:class:`Timeline` is a plugin on ``rhapsody_task_states_changed`` that reads the clock once per
batch the session hands over and writes that time into each task's ``timings`` mapping under
the task's new state: ``task.timings == {"SUBMITTED": t0, "RUNNING": t1, "DONE": t2}``, in
seconds since the epoch (``time.time()``). ``RUNNING`` is there only when the backend reports it.
A task that runs again after its worker was lost keeps its first ``SUBMITTED`` (the session
tells plugins of a submission once) and gets the later ``RUNNING`` and final times.

One clock read per batch, not per task: a batch of 10 000 ended tasks costs one ``time.time()``
and 10 000 dict stores. The times are those of the hand-over to the session, so a task that
ended inside a backend a few milliseconds before its batch was reported is stamped at the
report. It runs before every other implementation of the hook (``tryfirst``), so recorders
registered next to it read the stamps of the batch they are told about.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..hookspecs import hookimpl
from ..states import TaskState
from ..task import Task

_dict_get = dict.get


class Timeline:
    """Stamps ``task.timings[state]`` for every state change it is told about."""

    @hookimpl(tryfirst=True)
    def rhapsody_task_states_changed(self, tasks: Sequence[Task]) -> None:
        now = time.time()
        for task in tasks:
            stamps = _dict_get(task, "timings")
            if stamps is None:
                task["timings"] = {task["state"]: now}
            else:
                stamps[task["state"]] = now


def submitted(task: Task) -> float | None:
    """When the session handed the task to its backend (``None`` if not stamped)."""
    stamps: dict[str, float] | None = task.get("timings")
    return stamps.get(TaskState.SUBMITTED) if stamps else None


def failure_text(task: Task, limit: int = 2000) -> str:
    """What a failed (or cancelled) task left to read: the end of its stderr, else its exception."""
    stderr = (task.get("stderr") or "").strip()
    if stderr:
        return stderr[-limit:]
    error: Any = task.get("exception")
    if error is not None:
        return f"{type(error).__name__}: {error}"[-limit:]
    if task.get("exit_code") is not None:
        return f"exit code {task['exit_code']}, no stderr"
    return "no detail"


def task_label(task: Task) -> str:
    """How reports name a task: ``"name (uid)"``, or the uid of a task without a name."""
    name = task.get("name")
    return f"{name} ({task['uid']})" if name else str(task["uid"])
