"""The loop a long-lived pool worker runs, inside a Dragon process (see :mod:`rhapsody_dragon.pool`).

A worker takes a chunk of function tasks from the pool's task queue, runs them one after another
and puts their results on the results queue: at the end of the chunk, and meanwhile every
:data:`FLUSH_AFTER_S` from a thread of its own (a slow task does not hold back the results of the
quick ones before it). A ``b"stop"`` item ends the loop, and so does the loss of the worker's
parent (the Dragon runtime's local services), seen between tasks and while a put waits: a
runtime killed without a shutdown leaves no pool worker behind.

Before each task the worker writes ``(chunk, position, pid)`` into a small progress file of its
slot on its own node (a store into a shared mapping of the file: no system call, no round trip). A worker that dies (``os._exit``, a signal, a
crash in C code) sends nothing; Dragon's ProcessGroup starts a replacement from the same template,
so with the same slot, on the same node, and the replacement's first message (``hello``) carries
what the progress file says the dead worker was doing. The pool fails that one task as lost and
runs the rest of its chunk again.
"""

from __future__ import annotations

import asyncio
import functools
import mmap
import os
import pickle
import queue
import signal
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

STOP = b"stop"
# This process's node, as a worker's hello names it and the pool compares it (its own node's
# workers are the ones it can watch and kill).
HOST = socket.gethostname()
# While a chunk runs, the results it has so far are sent this often.
FLUSH_AFTER_S = 0.2
_PROGRESS = struct.Struct("qqq")  # chunk id, 1-based position of the running task (0: none yet), pid
_IDLE = _PROGRESS.pack(0, 0, 0)
# How long an idle worker waits on the task queue before it looks again whether its parent is
# gone. Each wait spins for up to ~0.1 s first (Dragon's adaptive wait): 1 s cost a tenth of a
# core per idle worker.
_GET_TIMEOUT_S = 5.0


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


def dumps_result(value: Any) -> bytes:
    """``value`` pickled for the trip back: plain pickle (fast), cloudpickle for what it cannot
    do (e.g. a class defined in the task's own function), else an error saying why."""
    try:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - cloudpickle may still manage
        pass
    try:
        return cloudpickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - the task ends, with why its result could not travel
        return pickle.dumps(RuntimeError(f"dragon pool: the task's result could not be pickled: {exc!r}"))


class _Runner:
    """Runs one task: its function (awaited when it returns a coroutine) under its timeout."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, function: Any, args: Any, kwargs: Any, timeout: float | None) -> tuple[bool, bytes]:
        """``(True, pickled value)`` or ``(False, pickled exception)``."""
        if timeout is not None:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            value = function(*args, **kwargs)
            if asyncio.iscoroutine(value):
                if self._loop is None:
                    self._loop = asyncio.new_event_loop()
                value = self._loop.run_until_complete(value)
        except _Timeout:
            return False, pickle.dumps(TimeoutError(f"the task exceeded its timeout of {timeout} s"))
        except Exception as exc:  # noqa: BLE001 - the task's own exception goes to its future
            return False, dumps_result(exc)
        finally:
            if timeout is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
        return True, dumps_result(value)


def _cannot_load(tids: list[int], error: Exception) -> list[tuple[int, bool, bytes]]:
    """Failed results for the tasks ``tids``, whose one function this worker could not unpickle."""
    failure = pickle.dumps(RuntimeError(f"dragon: a pool worker could not unpickle the task's function: {error!r}"))
    return [(tid, False, failure) for tid in tids]


class _Outbox:
    """Sends this worker's messages, and the running chunk's results as they come.

    The loop adds each result; a thread sends what has gathered every FLUSH_AFTER_S, and
    :meth:`end` sends the rest with the chunk's final flag. The same thread watches the
    worker's parent (Dragon's local services, which started this process): once it is gone
    (the runtime killed without a shutdown), ``orphaned`` is set and the loop leaves at its next
    look, between tasks or when its wait for work ends. A put that finds the results queue full
    (its reader gone) waits in steps and gives up then too.
    """

    def __init__(self, put: Callable[..., None]) -> None:
        self._put = put
        self._parent = os.getppid()
        self._lock = threading.Lock()
        self._chunk = 0
        self._done: list[tuple[int, bool, bytes]] = []
        self.orphaned = False
        self._stopped = threading.Event()
        threading.Thread(target=self._flush_every, name="rhapsody-dragon-flush", daemon=True).start()

    def send(self, message: tuple[Any, ...]) -> bool:
        """Put ``message``; False when it could not be, as the parent is gone."""
        data = pickle.dumps(message)
        while True:
            try:
                self._put(data, timeout=_GET_TIMEOUT_S)
                return True
            except queue.Full:
                if self._parent_gone():
                    return False

    def begin(self, chunk_id: int) -> None:
        with self._lock:
            self._chunk, self._done = chunk_id, []

    def add(self, result: tuple[int, bool, bytes]) -> None:
        with self._lock:
            self._done.append(result)

    def end(self) -> bool:
        """Send the chunk's last results, flagged final; False when the parent is gone."""
        with self._lock:
            chunk, done = self._chunk, self._done
            self._chunk, self._done = 0, []
            return self.send(("done", chunk, done, True))

    def stop(self) -> None:
        self._stopped.set()

    def _parent_gone(self) -> bool:
        # Re-parented: nothing will ever stop this process, and Dragon's queue waits would keep
        # a CPU partly busy meanwhile.
        if os.getppid() != self._parent:
            self.orphaned = True
        return self.orphaned

    def _flush_every(self) -> None:
        while not self._stopped.wait(FLUSH_AFTER_S) and not self._parent_gone():
            with self._lock:
                if self._chunk and self._done:
                    done, self._done = self._done, []
                    self.send(("done", self._chunk, done, False))


def serve(slot: int, tasks: Any, results: Any, progress_dir: str) -> None:
    """The worker loop of pool slot ``slot``: ``tasks`` and ``results`` are Dragon Queues.

    A chunk is its id (8 bytes, little-endian) followed by
    ``pickle.dumps((len(functions), tids, cloudpickle.dumps(functions), cloudpickle.dumps(entries)))``,
    the entry of each of ``tids`` being ``(timeout, index of its function, args, kwargs)``: two
    cloudpickle calls per chunk, as cloudpickle's cost is mostly per call. Results go back pickled as
    ``("done", chunk_id, [(tid, ok, pickled value), ...], final)``, each value pickled on its
    own so that one the pool cannot unpickle fails only its task.

    What this worker cannot unpickle (e.g. a module missing here): when it is the chunk's one
    function, every task of the chunk fails at once with why (a workload whose function the
    workers cannot import fails chunk by chunk, not task by task). Otherwise the chunk goes back
    as ``("unloadable", chunk_id, error)``: the pool sends its tasks again one by one, so that
    each fails or runs on its own.
    """
    signal.signal(signal.SIGALRM, _on_alarm)
    directory = Path(progress_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = progress_path(progress_dir, slot)
    # What the previous worker of this slot was doing when it died (zeros: it was idle, or this
    # is the slot's first worker).
    lost = read_progress(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.pwrite(fd, _IDLE, 0)
    # Stores into the shared mapping reach the file's pages at once, and stay there when this
    # process dies: what the next worker of the slot reads.
    progress = mmap.mmap(fd, _PROGRESS.size)
    pid = os.getpid()
    mark = functools.partial(_PROGRESS.pack_into, progress, 0)
    runner = _Runner()
    outbox = _Outbox(results.put)
    send = outbox.send
    try:
        if not send(("hello", slot, HOST, pid, lost)):
            return
        while not outbox.orphaned:
            try:
                item = tasks.get(timeout=_GET_TIMEOUT_S)
            except queue.Empty:
                continue
            if item == STOP:
                return
            chunk_id = int.from_bytes(item[:8], "little")
            mark(chunk_id, 0, pid)
            count, tids, function_part, entry_part = pickle.loads(item[8:])  # plain: loads anywhere
            functions = None
            try:
                functions = cloudpickle.loads(function_part)
                entries = cloudpickle.loads(entry_part)
            except Exception as exc:  # noqa: BLE001 - see the docstring
                one_function_missing = functions is None and count == 1
                message = ("done", chunk_id, _cannot_load(tids, exc), True) if one_function_missing else \
                    ("unloadable", chunk_id, repr(exc))
                if not send(message):
                    return
                mark(0, 0, 0)
                continue
            outbox.begin(chunk_id)
            for position, (tid, (timeout, index, args, kwargs)) in enumerate(zip(tids, entries), 1):
                if outbox.orphaned:
                    return
                mark(chunk_id, position, pid)
                outbox.add((tid, *runner.run(functions[index], args, kwargs, timeout)))
            # Results first, then idle: a death in between is reported for a chunk already done,
            # which the pool ignores; the other order could lose the chunk's results unseen.
            if not outbox.end():
                return
            mark(0, 0, 0)
    finally:
        outbox.stop()
        progress.close()
        os.close(fd)
        path.unlink(missing_ok=True)
        try:
            directory.rmdir()  # the last worker of the node leaves nothing behind
        except OSError:
            pass
