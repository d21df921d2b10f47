"""Timings: the wall-clock time each task entered each state, stamped once per hand-over.

:class:`Timeline` is a plugin on ``rhapsody_task_states_changed`` that reads the clock once per
batch the session hands over and writes that time into each task's ``timings`` mapping under
the task's new state: ``task.timings == {"SUBMITTED": t0, "RUNNING": t1, "DONE": t2}``, in
seconds since the epoch (``time.time()``). ``RUNNING`` is there only when the backend reports it.
A task that runs again after its worker was lost keeps its first ``SUBMITTED`` (the session
tells plugins of a submission once) and gets the later ``RUNNING`` and final times.

One clock read per batch, not per task: a batch of 10 000 ended tasks costs one ``time.time()``,
one new timings mapping (:class:`Stamps`, shared by the tasks of the batch that shared their
timings before, hence read-only) and 10 000 stores of it. The times are those of the hand-over to the session, so a task that
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


class Stamps(dict):  # type: ignore[type-arg]
    """A task's timings: a read-only ``dict`` of state -> time.

    Read-only because it is shared: all tasks of one hand-over that had the same timings before
    get the same new ``Stamps`` (a batch of 10 000 completions makes one, not 10 000).
    ``dict(task.timings)`` is a copy of one's own.
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("task.timings is read-only: tasks of one hand-over share it; "
                        "copy it with dict(task.timings)")

    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    update = setdefault = pop = popitem = clear = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (Stamps, (dict(self),))  # unpickled without __setitem__


_NOTHING = object()
_NO_STAMPS = Stamps()


class Timeline:
    """Stamps ``task.timings[state]`` for every state change it is told about."""

    @hookimpl(tryfirst=True)
    def rhapsody_task_states_changed(self, tasks: Sequence[Task]) -> None:
        now = time.time()
        # id(timings before) -> (timings before, state, timings after): tasks that shared their
        # timings and reach the same state share the new ones. Holding the old object keeps its
        # id from being reused while the batch is stamped.
        made: dict[int, tuple[Any, str, Stamps]] = {}
        last: Any = _NOTHING  # the previous task's: neighbours in a batch mostly share theirs
        last_state = ""
        after = _NO_STAMPS
        for task in tasks:
            state = task["state"]
            before = _dict_get(task, "timings")
            if before is not last or state != last_state:
                last, last_state = before, state
                entry = made.get(id(before))
                if entry is not None and entry[1] == state:
                    after = entry[2]
                else:
                    after = Stamps(before or (), **{state: now})
                    if entry is None:
                        made[id(before)] = (before, state, after)
            task["timings"] = after


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
