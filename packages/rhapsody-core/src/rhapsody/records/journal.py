"""The journal: every task that ended DONE, with its results, so that a later run can skip it.

``Session(records=[Journal("run.journal")])`` (or ``rhapsody run W --journal run.journal``)
appends one line per task that ends ``DONE``; a later session given the same file looks each
task it submits up by its identity (see :mod:`rhapsody.records.identity`) and, where the journal
has it, ends it ``DONE`` at once with the recorded results, without handing it to a backend.
Such a task has ``task.restored == True``, and run summaries count it as restored.

The file is JSON Lines, one object per DONE task::

    {"v": 1, "key": "sha256:...", "uid": "task.4242.7", "name": null, "time": 1764770000.25,
     "exit_code": null, "stdout": null, "stderr": null, "value": "gASV..."}

``value`` is the base64 of the cloudpickle of the task's return value (and, for AI tasks, its
``response``, ``finish_reason`` and ``usage``). Where that cannot be pickled, ``value`` is left
out and ``unpicklable`` says why (``"TypeError: cannot pickle '_thread.lock' object"``); a later
run does not restore such a task but runs it again, since it has no value to give back.
Restoring unpickles: a journal is as trusted as a pickle file, so use only your own runs'.

Durability: each line is written with one ``os.write`` to a file opened ``O_APPEND``, so lines
from one writer never interleave and a process killed at any moment (SIGKILL included) leaves
every line it wrote complete, except at most the last one being written. ``os.fsync`` runs at
most once a second while tasks end, and when the session closes: a killed *process* loses no
line the kernel has, a crashed *machine* may lose the last second of them. On reading, a line
that is not one complete JSON object (a torn last line) is ignored, and an appending run starts
on a new line, so a torn line never swallows the next one. Tasks that were running when the
run was killed have no line and run again.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import cloudpickle

from ..hookspecs import hookimpl
from ..states import TaskState
from ..task import Task
from .identity import task_key

FORMAT_VERSION = 1
_FSYNC_EVERY_S = 1.0
# Results kept as pickled values: they may be any Python object.
_VALUE_FIELDS = ("return_value", "response", "finish_reason", "usage")
# Results kept as JSON: always text or an int, and greppable in the file.
_TEXT_FIELDS = ("exit_code", "stdout", "stderr")


class Journal:
    """Records tasks that end DONE in ``path`` and gives their results back to a later run.

    Args:
        path: the journal file; created when missing, appended to when present.

    Give it to a session (``Session(records=[Journal(path)])``), which opens it when it starts
    and closes it when it closes. ``restored`` counts the tasks it gave back, ``recorded`` the
    lines it wrote, ``ignored_lines`` the lines of the file it could not read (a torn last line).

    Raises (on open):
        OSError: the file cannot be read or opened for appending.
        ValueError: the file holds lines of another format version.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.restored = 0
        self.recorded = 0
        self.ignored_lines = 0
        self._known: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, str] = {}  # uid -> identity, for tasks looked up and not found
        self._fd: int | None = None
        self._last_sync = 0.0
        self._unsynced = False

    # -- life cycle --------------------------------------------------------------------------

    def open(self) -> None:
        """Read what the file holds and open it for appending."""
        if self._fd is not None:
            return
        torn_tail = False
        try:
            with open(self.path, "rb") as stream:
                data = stream.read()
        except FileNotFoundError:
            data = b""
        if data:
            lines = data.split(b"\n")
            # The piece after the last newline is an unfinished line (empty when none).
            torn_tail = bool(lines[-1])
            for raw in lines[:-1]:
                if raw.strip():  # blank lines (an edited file) are no records and no damage
                    self._take(raw)
            if torn_tail:
                self.ignored_lines += 1
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if torn_tail:
            os.write(fd, b"\n")  # the next line starts clean; the torn one stays unreadable
        self._fd = fd
        self._last_sync = time.monotonic()

    def _take(self, raw: bytes) -> None:
        try:
            record = json.loads(raw)
        except ValueError:
            self.ignored_lines += 1
            return
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            self.ignored_lines += 1
            return
        if record.get("v") != FORMAT_VERSION:
            raise ValueError(f"{self.path}: a journal line of format version {record.get('v')!r}; "
                             f"this rhapsody reads version {FORMAT_VERSION}")
        self._known[record["key"]] = record

    def close(self) -> None:
        """Flush what was written to the disk (fsync) and close the file. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._unsynced:
                os.fsync(fd)
        finally:
            os.close(fd)

    # -- restoring ---------------------------------------------------------------------------

    def lookup(self, task: Task) -> dict[str, Any] | None:
        """The result fields that restore ``task`` (with ``restored: True``), or ``None`` when
        it must run: the journal has no line for it, or its value was not picklable, or it
        cannot be unpickled here (its class is gone: the task then runs again)."""
        key = task_key(task)
        if key is None:
            return None
        record = self._known.get(key)
        results = None if record is None else _results(record)
        if results is None:
            self._keys[task["uid"]] = key
        return results

    # -- recording ---------------------------------------------------------------------------

    @hookimpl
    def rhapsody_task_states_changed(self, tasks: Sequence[Task]) -> None:
        fd = self._fd
        if fd is None:
            return
        keys = self._keys
        for task in tasks:
            state = task["state"]
            if state != TaskState.DONE:
                if state in (TaskState.FAILED, TaskState.CANCELED):
                    keys.pop(task["uid"], None)
                continue
            if dict.get(task, "restored"):
                self.restored += 1
                continue
            key = keys.pop(task["uid"], None) or task_key(task)
            if key is None:
                continue
            os.write(fd, _line(task, key))
            self.recorded += 1
            self._unsynced = True
        if self._unsynced and time.monotonic() - self._last_sync >= _FSYNC_EVERY_S:
            os.fsync(fd)
            self._unsynced = False
            self._last_sync = time.monotonic()


def _results(record: dict[str, Any]) -> dict[str, Any] | None:
    if "value" not in record:
        return None
    try:
        results: dict[str, Any] = cloudpickle.loads(base64.b64decode(record["value"]))
    except Exception:
        return None  # any error unpickling arbitrary objects: the task runs again instead
    for field in _TEXT_FIELDS:
        if record.get(field) is not None:
            results[field] = record[field]
    results["restored"] = True
    return results


def _line(task: Task, key: str) -> bytes:
    get = dict.get  # fields at their default (None) are not stored: a C call per field
    stamps = get(task, "timings") or {}
    record: dict[str, Any] = {"v": FORMAT_VERSION, "key": key, "uid": task["uid"],
                              "name": get(task, "name"), "time": stamps.get(TaskState.DONE)}
    for field in _TEXT_FIELDS:
        record[field] = get(task, field)
    values = {field: get(task, field) for field in _VALUE_FIELDS if get(task, field) is not None}
    try:
        record["value"] = base64.b64encode(cloudpickle.dumps(values, protocol=5)).decode("ascii")
    except Exception as exc:
        record["unpicklable"] = f"{type(exc).__name__}: {exc}"
    try:
        text = json.dumps(record)
    except (TypeError, ValueError):
        # stdout/stderr are str and exit_code an int from every backend; anything else as text.
        text = json.dumps(record, default=repr)
    return text.encode() + b"\n"
