"""The loop a long-lived pool worker runs, inside a Dragon process (see :mod:`rhapsody_dragon.pool`).

A worker takes a chunk of function tasks from the pool's task queue, runs them one after another
and puts their results on the results queue: at the end of the chunk, and earlier once a chunk has
run for :data:`FLUSH_AFTER_S` (a slow task does not hold back the results of the quick ones before
it). A ``b"stop"`` item ends the loop.

Before each task the worker writes ``(chunk, position, pid)`` into a small progress file of its
slot on its own node (one ``pwrite``, no round trip). A worker that dies (``os._exit``, a signal, a
crash in C code) sends nothing; Dragon's ProcessGroup starts a replacement from the same template,
so with the same slot, on the same node, and the replacement's first message (``hello``) carries
what the progress file says the dead worker was doing. The pool fails that one task as lost and
runs the rest of its chunk again.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

import cloudpickle

STOP = b"stop"
# A chunk that has run this long sends the results it has so far.
FLUSH_AFTER_S = 0.05
_PROGRESS = struct.Struct("qqq")  # chunk id, 1-based position of the running task (0: none yet), pid
_IDLE = _PROGRESS.pack(0, 0, 0)
_GET_TIMEOUT_S = 1.0  # how long a worker blocks on the task queue before looking again


class _Timeout(BaseException):
    """Raised into a task by the timer; a BaseException so that the task's ``except Exception``
    cannot swallow it."""


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise _Timeout


def progress_path(directory: str, slot: int) -> Path:
    """The progress file of worker slot ``slot`` (on the worker's own node)."""
    return Path(directory) / f"slot-{slot}"


def read_progress(path: Path) -> tuple[int, int, int]:
    """``(chunk, position, pid)`` from a progress file; zeros when it is missing or idle."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0, 0, 0
    if len(data) != _PROGRESS.size:
        return 0, 0, 0
    chunk, position, pid = _PROGRESS.unpack(data)
    return chunk, position, pid


def _dumps_result(value: Any) -> bytes:
    try:
        return cloudpickle.dumps(value)
    except Exception as exc:  # noqa: BLE001 - the task ends, with why its result could not travel
        return cloudpickle.dumps(RuntimeError(f"dragon pool: the task's result could not be pickled: {exc!r}"))


class _Runner:
    """Runs one task: its function (awaited when it returns a coroutine) under its timeout."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, payload: bytes, timeout: float | None) -> tuple[bool, bytes]:
        """``(True, pickled value)`` or ``(False, pickled exception)``."""
        if timeout is not None:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            function, args, kwargs = cloudpickle.loads(payload)
            value = function(*args, **kwargs)
            if asyncio.iscoroutine(value):
                if self._loop is None:
                    self._loop = asyncio.new_event_loop()
                value = self._loop.run_until_complete(value)
        except _Timeout:
            return False, cloudpickle.dumps(TimeoutError(f"the task exceeded its timeout of {timeout} s"))
        except Exception as exc:  # noqa: BLE001 - the task's own exception goes to its future
            return False, _dumps_result(exc)
        finally:
            if timeout is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
        return True, _dumps_result(value)


def serve(slot: int, tasks: Any, results: Any, progress_dir: str) -> None:
    """The worker loop of pool slot ``slot``: ``tasks`` and ``results`` are Dragon Queues.

    A chunk is ``cloudpickle.dumps((chunk_id, [(tid, timeout, payload), ...]))`` with ``payload``
    ``cloudpickle.dumps((function, args, kwargs))``; results go back as
    ``("done", chunk_id, [(tid, ok, pickled value), ...], final)``.
    """
    signal.signal(signal.SIGALRM, _on_alarm)
    directory = Path(progress_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = progress_path(progress_dir, slot)
    # What the previous worker of this slot was doing when it died (zeros: it was idle, or this
    # is the slot's first worker).
    lost = read_progress(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    pid = os.getpid()
    pwrite = os.pwrite
    pack = _PROGRESS.pack
    pwrite(fd, _IDLE, 0)
    results.put(cloudpickle.dumps(("hello", slot, socket.gethostname(), pid, lost)))
    runner = _Runner()
    monotonic = time.monotonic
    try:
        while True:
            try:
                item = tasks.get(timeout=_GET_TIMEOUT_S)
            except queue.Empty:
                continue
            if item == STOP:
                return
            chunk_id, entries = cloudpickle.loads(item)
            pwrite(fd, pack(chunk_id, 0, pid), 0)
            done: list[tuple[int, bool, bytes]] = []
            flush_at = monotonic() + FLUSH_AFTER_S
            last = len(entries)
            for position, (tid, timeout, payload) in enumerate(entries, 1):
                pwrite(fd, pack(chunk_id, position, pid), 0)
                ok, value = runner.run(payload, timeout)
                done.append((tid, ok, value))
                if position < last and monotonic() >= flush_at:
                    results.put(cloudpickle.dumps(("done", chunk_id, done, False)))
                    done = []
                    flush_at = monotonic() + FLUSH_AFTER_S
            # Results first, then idle: a death in between is reported for a chunk already done,
            # which the pool ignores; the other order could lose the chunk's results unseen.
            results.put(cloudpickle.dumps(("done", chunk_id, done, True)))
            pwrite(fd, _IDLE, 0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
        try:
            directory.rmdir()  # the last worker of the node leaves nothing behind
        except OSError:
            pass
