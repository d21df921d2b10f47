"""One task on the Batch: what the backend keeps about it, and the files it leaves behind.

An executable's runner (runner.py) leaves its output files and its process group's id; a function
runs inside :func:`run_watched`, which leaves ``HOST PID`` of its worker process for as long as it
runs. The backend reads each back when the task ends (or dies) and removes it.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
from pathlib import Path
from typing import Any

from rhapsody import Task

HOST = socket.gethostname()


def run_watched(watch_path: str, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Runs a function task on a Dragon worker, leaving ``HOST PID`` in ``watch_path`` meanwhile.

    A worker process that dies in the middle of a function (``os._exit``, a signal, a crash in C
    code) returns no result and Batch never says so: the file it leaves behind, naming a process
    that no longer exists, is how the monitor finds the task lost. ``async def`` functions are
    awaited here too (Dragon workers only call plain functions).
    """
    try:
        with open(watch_path, "w") as file:
            file.write(f"{HOST} {os.getpid()}")
    except OSError:
        pass  # e.g. a node that does not share the directory: the task runs unwatched
    try:
        value = function(*args, **kwargs)
        return asyncio.run(value) if inspect.iscoroutine(value) else value
    finally:
        try:
            os.unlink(watch_path)
        except OSError:
            pass


class BatchEntry:
    """What the monitor needs about one in-flight task; dropped when the task ends."""

    __slots__ = ("task", "handle", "stdout_path", "stderr_path", "pid_path", "watch_path")

    def __init__(self, task: Task, handle: Any, stdout_path: Path | None = None,
                 stderr_path: Path | None = None, pid_path: Path | None = None,
                 watch_path: Path | None = None) -> None:
        self.task = task
        self.handle = handle
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.pid_path = pid_path  # an executable's process group (see runner.py)
        self.watch_path = watch_path  # a function's worker while it runs (see run_watched)


def cancel_in_dragon(entry: BatchEntry, timeout: float) -> None:
    """Ask Dragon to cancel a task (queued: it never starts; running: its worker stops it)."""
    if timeout <= 0:
        return
    try:
        entry.handle.cancel(timeout)
    except Exception:  # noqa: BLE001 - a lost cancel reply still leaves the task cancelled here
        pass


def kill_group(entry: BatchEntry) -> None:
    # The runner writes its program's process group id once the program has started (same
    # node only: on other nodes the pid file is not readable here or names another process).
    if entry.pid_path is None:
        return
    try:
        pgid = int(entry.pid_path.read_text())
        os.killpg(pgid, signal.SIGKILL)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        pass


def timed_out(entry: BatchEntry) -> bool:
    return entry.pid_path is not None and entry.pid_path.with_suffix(".pid.timeout").exists()


def drop_pid(entry: BatchEntry) -> None:
    if entry.pid_path is not None:
        entry.pid_path.unlink(missing_ok=True)
        entry.pid_path.with_suffix(".pid.timeout").unlink(missing_ok=True)


def collect_output(task: Task, entry: BatchEntry) -> None:
    task["stdout"] = read_and_remove(entry.stdout_path)
    task["stderr"] = read_and_remove(entry.stderr_path)


def drop_output(entry: BatchEntry) -> None:
    if entry.stdout_path is not None:
        entry.stdout_path.unlink(missing_ok=True)
        entry.stderr_path.unlink(missing_ok=True)  # type: ignore[union-attr]
    drop_pid(entry)


def read_and_remove(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    path.unlink(missing_ok=True)
    return text
