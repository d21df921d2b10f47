"""The event log: one JSON line per state change of every task, for grep, jq and pandas.

``Session(records=[EventLog("run.jsonl")])`` or ``rhapsody run W --events run.jsonl``. Each line
is one JSON object (format version 1; keys are added, never renamed or removed, within a
version)::

    {"v": 1, "time": 1764770000.251, "uid": "task.4242.7", "name": "#3 sleep 1",
     "kind": "executable", "backend": "concurrent", "state": "FAILED", "exit_code": 1,
     "error": "TaskExecutionError: ...", "retried": 0}

Always present: ``v``, ``time`` (seconds since the epoch, the task's timing for this state),
``uid``, ``name`` (``null`` when the task has none), ``kind`` (``function``, ``executable``,
``ai``), ``backend`` and ``state`` (``SUBMITTED``, ``RUNNING``, ``DONE``, ``FAILED`` or
``CANCELED``). On the final line of a task also: ``exit_code`` (``null`` for functions),
``error`` (``"Type: message"`` of the exception, else the end of stderr; ``null`` when DONE)
and ``retried``. Only where known: ``worker`` (the worker or host the backend names) and
``restored: true`` (results given back by a journal, nothing ran).

Keys are written with ``", "`` and ``": "`` separators, so ``grep '"state": "FAILED"'`` finds
every failure. The file is written over (not appended to) by each run, one write per batch the
session hands over, flushed to the operating system after each batch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import IO, Any

from ..hookspecs import hookimpl
from ..states import TERMINAL_STATES, TaskState
from ..task import Task
from .timeline import failure_text

FORMAT_VERSION = 1


class EventLog:
    """Writes one JSON line per task state change to ``path`` (see the module docstring).

    Raises (on open): OSError: the file cannot be created.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.written = 0
        self._file: IO[str] | None = None

    def open(self) -> None:
        """Create (or empty) the file."""
        if self._file is None:
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def close(self) -> None:
        """Close the file. Idempotent."""
        stream, self._file = self._file, None
        if stream is not None:
            stream.close()

    @hookimpl
    def rhapsody_task_states_changed(self, tasks: Sequence[Task]) -> None:
        stream = self._file
        if stream is None:
            return
        now = time.time()
        lines = [line(task, now) for task in tasks]
        lines.append("")
        stream.write("\n".join(lines))
        stream.flush()
        self.written += len(tasks)


def event(task: Task, now: float | None = None) -> dict[str, Any]:
    """The event-log object for ``task``'s current state (``now`` when it has no timing)."""
    # dict.get, not task.get: fields at their default are not stored, and these defaults are
    # None (or 0); a C call per field instead of a Python one, per task and state.
    state = task["state"]
    stamps = _get(task, "timings") or _NO_TIMES
    record: dict[str, Any] = {
        "v": FORMAT_VERSION, "time": stamps.get(state, now), "uid": task["uid"],
        "name": _get(task, "name"), "kind": task.kind, "backend": task["backend"], "state": state,
    }
    if state in TERMINAL_STATES:
        record["exit_code"] = _get(task, "exit_code")
        record["error"] = None if state == TaskState.DONE else failure_text(task, 500)
        record["retried"] = _get(task, "retried", 0)
    worker = _get(task, "worker")
    if worker is not None:
        record["worker"] = str(worker)
    if _get(task, "restored"):
        record["restored"] = True
    return record


def line(task: Task, now: float | None = None) -> str:
    """``json.dumps(event(task, now))``, the same text, written about twice as fast: each value
    is formatted as json formats it (its own C string quoting, ``repr`` of finite floats and
    ints), without building the object first."""
    state = task["state"]
    stamps = _get(task, "timings") or _NO_TIMES
    text = (f'{{"v": {FORMAT_VERSION}, "time": {_value(stamps.get(state, now))}, '
            f'"uid": {_value(task["uid"])}, "name": {_value(_get(task, "name"))}, '
            f'"kind": {_value(task.kind)}, "backend": {_value(task["backend"])}, '
            f'"state": {_value(state)}')
    if state in TERMINAL_STATES:
        error = None if state == TaskState.DONE else failure_text(task, 500)
        text += (f', "exit_code": {_value(_get(task, "exit_code"))}, "error": {_value(error)}, '
                 f'"retried": {_value(_get(task, "retried", 0))}')
    worker = _get(task, "worker")
    if worker is not None:
        text += f', "worker": {_value(str(worker))}'
    if _get(task, "restored"):
        text += ', "restored": true'
    return text + "}"


def _value(value: Any) -> str:
    """``json.dumps(value)`` for the values an event holds, the common ones without its call."""
    kind = type(value)
    if kind is str:
        return _quote(value)
    if value is None:
        return "null"
    if kind is int or (kind is float and math.isfinite(value)):
        return repr(value)  # what json writes for these; nan and infinities go to json below
    return json.dumps(value)


_quote = json.encoder.encode_basestring_ascii  # what json.dumps quotes strings with
_get = dict.get
_NO_TIMES: dict[str, float] = {}
