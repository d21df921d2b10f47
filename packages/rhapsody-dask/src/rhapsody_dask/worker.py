"""What runs inside the Dask workers: the task runners ``DaskBackend`` hands to ``client.map``.

The workers import this module by reference, so rhapsody-dask must be installed wherever they
run (like any library the tasks themselves import). Each runner marks its task started in the
backend's worker markers for as long as it runs, which is how the backend tells, after a worker
died, which of its tasks was executing and which were only queued there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

from rhapsody.builtin.worker_markers import mark_chunk, mark_task, worker_marker

from .errors import TaskLoadError

# Unpickled functions kept per worker process, at most this many (then forgotten all at once).
_LOADED_LIMIT = 256
# How long a cancelled or timed-out program's group gets between SIGTERM and SIGKILL.
KILL_GRACE_S = 3.0


# Unpickled functions by their pickle: a map of one function sends every task the same bytes.
_loaded: dict[bytes, Any] = {}


def _load(function_blob: bytes, arguments_blob: bytes | None) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """The task's function and arguments, as the client pickled them.

    Raises:
        TaskLoadError: they cannot be unpickled here (e.g. a module only the client has).
    """
    function = _loaded.get(function_blob)
    if function is None:
        try:
            function = pickle.loads(function_blob)
        except Exception as exc:
            raise TaskLoadError("function", f"{type(exc).__name__}: {exc}") from exc
        if len(_loaded) >= _LOADED_LIMIT:
            _loaded.clear()
        _loaded[function_blob] = function
    if arguments_blob is None:
        return function, (), {}
    try:
        args, kwargs = pickle.loads(arguments_blob)
    except Exception as exc:
        raise TaskLoadError("arguments", f"{type(exc).__name__}: {exc}") from exc
    return function, args, kwargs


# Marker slots of this worker process: each task it executes holds one for its duration, so
# tasks running at the same time (several threads, async tasks) never share a marker.
_slot_lock = threading.Lock()
_free_slots: list[int] = []
_slot_count = 0
_slot_dirs: set[str] = set()  # slot directories known to exist
_no_markers: set[str] = set()  # marker directories this host does not have (another host)


def _begin(markers: str | None, marker_id: int) -> tuple[Any, int] | None:
    """Mark task ``marker_id`` started in this process's marker (``None``: no marker here)."""
    global _slot_count
    if markers is None or markers in _no_markers:
        return None
    with _slot_lock:
        if _free_slots:
            slot = _free_slots.pop()
        else:
            slot = _slot_count
            _slot_count += 1
    directory = os.path.join(markers, str(slot))
    try:
        if directory not in _slot_dirs:
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                pass
            _slot_dirs.add(directory)
        marker = worker_marker(directory)
    except OSError:
        # The backend's directory is not on this host: its markers could not be read anyway.
        _no_markers.add(markers)
        with _slot_lock:
            _free_slots.append(slot)
        return None
    mark_chunk(marker, marker_id)
    return marker, slot


def _end(handle: tuple[Any, int] | None) -> None:
    """Mark the task of ``handle`` ended and free its slot."""
    if handle is None:
        return
    marker, slot = handle
    mark_task(marker, 1)
    with _slot_lock:
        _free_slots.append(slot)


@contextlib.contextmanager
def _marked(markers: str | None, marker_id: int) -> Iterator[None]:
    """Task ``marker_id`` is marked started in this worker process while the block runs."""
    handle = _begin(markers, marker_id)
    try:
        yield
    finally:
        _end(handle)


def call(marker_id: int, function_blob: bytes, arguments_blob: bytes | None,
         markers: str | None = None) -> Any:
    """Run a sync function task in a worker thread."""
    with _marked(markers, marker_id):
        function, args, kwargs = _load(function_blob, arguments_blob)
        return function(*args, **kwargs)


async def call_async(marker_id: int, function_blob: bytes, arguments_blob: bytes | None,
                     timeout: float | None, markers: str | None = None) -> Any:
    """Run an ``async`` function task on the worker's event loop (as Dask runs coroutines)."""
    with _marked(markers, marker_id):
        function, args, kwargs = _load(function_blob, arguments_blob)
        if timeout is None:
            return await function(*args, **kwargs)
        try:
            return await asyncio.wait_for(function(*args, **kwargs), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the task exceeded its timeout of {timeout} s") from None


def run_executable(
    marker_id: int,
    key: str,
    executable: str,
    arguments: list[str],
    cwd: str | None,
    env: dict[str, str] | None,
    shell: bool,
    timeout: float | None,
    markers: str | None = None,
) -> tuple[int, str, str, str | None]:
    """Run an executable task in its own process group; return (exit code, stdout, stderr, why
    it was stopped: ``"timeout"``, ``"cancelled"`` or ``None``).

    Raises:
        OSError: the program or ``cwd`` does not exist (the task fails with it).
    """
    with _marked(markers, marker_id):
        return _run_process(key, [executable, *arguments], cwd, env, shell, timeout)


def _run_process(key: str, argv: list[str], cwd: str | None, env: dict[str, str] | None,
                 shell: bool, timeout: float | None) -> tuple[int, str, str, str | None]:
    # A shell gets the program as written (it may be a snippet) and each argument quoted.
    command: Any = " ".join([argv[0], *map(shlex.quote, argv[1:])]) if shell else argv
    process = subprocess.Popen(
        command, shell=shell, cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True,
    )
    deadline = None if timeout is None else time.monotonic() + timeout
    cancelled = _cancel_probe(key)
    stopped = None
    while True:
        wait = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
        try:
            out, err = process.communicate(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            if process.poll() is not None:
                # The program ended, but something it started in the background still holds
                # its output open: the task is over, and that process must not outlive it.
                pass
            elif deadline is not None and time.monotonic() >= deadline:
                stopped = "timeout"
            elif cancelled():
                stopped = "cancelled"
            else:
                continue
        _kill_group(process)
        out, err = process.communicate()
        break
    # Whatever the program left running in its group with its output redirected.
    _kill_leftovers(process.pid)
    return (process.returncode, out.decode(errors="replace"), err.decode(errors="replace"), stopped)


def still_running(keys: list[str], dask_worker: Any = None) -> list[str]:
    """Which of ``keys`` a worker is still executing (run through ``Client.run``)."""
    tasks = dask_worker.state.tasks
    return [k for k in keys if k in tasks and tasks[k].state in ("executing", "cancelled",
                                                                  "long-running", "resumed")]


def _cancel_probe(key: str) -> Any:
    """A check for whether Dask cancelled (released) this task on the worker running it."""
    try:
        from distributed import get_worker

        tasks = get_worker().state.tasks
    except Exception:  # noqa: BLE001 - not in a worker (e.g. a test calling the runner directly)
        return lambda: False

    def cancelled() -> bool:
        state = tasks.get(key)
        return state is None or state.state in ("cancelled", "released", "forgotten")

    return cancelled


def _kill_leftovers(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            continue
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever else the group started
        except ProcessLookupError:
            pass
        return
