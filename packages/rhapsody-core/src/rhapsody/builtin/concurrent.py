"""The ``concurrent`` backend: functions on a thread or process pool, executables as subprocesses.

Functions go to a ``concurrent.futures`` executor in chunks: one pool work item carries several
tasks, so a large submission pays the pool's per-item cost (a lock, a queue hop and, for
processes, a pickle round trip) once per chunk instead of once per task. Chunks are small enough
(at most a quarter of the tasks per worker, see ``_chunk_size``) that the pool stays balanced.
Thread chunks report each task as it ends; process chunks report when the chunk returns.

Executables run as asyncio subprocesses in their own session (process group), so a timeout or a
cancellation kills everything the command started.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shlex
import signal
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import cloudpickle

from ..backend import BaseBackend, check_process_options
from ..hookspecs import hookimpl
from ..states import TaskState
from ..task import Task

_DONE, _FAILED, _CANCELED = TaskState.DONE, TaskState.FAILED, TaskState.CANCELED
_EXECUTABLE_OPTIONS = frozenset({"cwd", "env", "shell"})
_MAX_CHUNK = 256
_KILL_GRACE = 3.0


# Where an executable's driver is; it decides how cancel_task stops it (see _cancel_driver).
_NEW, _RUNNING, _STARTING, _DOOMED = "new", "running", "starting", "doomed"


class _Driver:
    """An executable task and the asyncio task that runs it."""

    __slots__ = ("task", "job", "phase")

    def __init__(self, task: Task) -> None:
        self.task = task
        self.job: asyncio.Task[None]
        self.phase = _NEW


class ConcurrentBackend(BaseBackend):
    """Runs tasks on this machine.

    Args:
        executor: a ``ThreadPoolExecutor`` or ``ProcessPoolExecutor`` for function tasks. When
            given, the backend never shuts it down. Default: a thread pool of ``max_workers``.
        max_workers: size of the default thread pool (Python's default when omitted).
        max_subprocesses: how many executables run at once (default: the number of CPUs).

    Executable tasks honour ``task_backend_specific_kwargs`` ``cwd`` (working directory),
    ``env`` (the whole environment of the process; ``None`` inherits this process's) and
    ``shell`` (run ``executable`` through ``/bin/sh``, with ``arguments`` quoted onto it).

    Raises:
        TypeError: ``executor`` is not a thread or process pool.
        ValueError: ``max_workers`` or ``max_subprocesses`` is below 1.
    """

    name = "concurrent"
    task_kinds = frozenset({"function", "executable"})

    def __init__(
        self,
        *,
        executor: Executor | None = None,
        max_workers: int | None = None,
        max_subprocesses: int | None = None,
    ) -> None:
        super().__init__()
        if executor is not None and not isinstance(executor, (ThreadPoolExecutor, ProcessPoolExecutor)):
            raise TypeError(
                f"concurrent: executor must be a ThreadPoolExecutor or ProcessPoolExecutor, "
                f"got {type(executor).__name__}"
            )
        for label, value in (("max_workers", max_workers), ("max_subprocesses", max_subprocesses)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"concurrent: {label} must be an integer >= 1, got {value!r}")
        self._owns_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="rhapsody-concurrent"
        )
        self._in_processes = isinstance(self._executor, ProcessPoolExecutor)
        # Both pool classes record their size here; there is no public accessor.
        self._workers: int = getattr(self._executor, "_max_workers", os.cpu_count() or 1)
        self._max_subprocesses = max_subprocesses or os.cpu_count() or 1
        self._slots: asyncio.Semaphore | None = None
        # uid -> its chunk (threads) or the chunk's pool future (processes) until the task starts.
        self._queued: dict[str, Any] = {}
        # uid -> the driver of an executable, until it ends.
        self._drivers: dict[str, _Driver] = {}

    @property
    def executor(self) -> Executor:
        """The pool that runs function tasks."""
        return self._executor

    async def _initialize(self) -> None:
        self._slots = asyncio.Semaphore(self._max_subprocesses)

    # -- submit ------------------------------------------------------------------------------

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        functions: list[Task] = []
        for task in tasks:
            options = task["task_backend_specific_kwargs"]
            if task.kind == "executable":
                if options:
                    _check_executable_options(task, options)
            else:
                if options:
                    raise ValueError(
                        f"task {task['uid']}: concurrent takes no task_backend_specific_kwargs for "
                        f"function tasks, got {sorted(options)}"
                    )
                if task["timeout"] is not None and not inspect.iscoroutinefunction(task["function"]):
                    raise ValueError(
                        f"task {task['uid']}: concurrent cannot interrupt a running sync function, "
                        "so timeout= works only for async functions and executables"
                    )
                functions.append(task)
        chunks: list[list[Task]] = []
        if functions:
            size = _chunk_size(len(functions), self._workers)
            chunks = [functions[start:start + size] for start in range(0, len(functions), size)]
        # Pickled before anything starts, so a task that cannot travel fails the whole call.
        payloads = [_pickle_chunk(chunk) if self._in_processes else None for chunk in chunks]
        create_task = asyncio.get_running_loop().create_task
        drivers = self._drivers
        for task in tasks:
            if task["function"] is None:
                driver = drivers[task["uid"]] = _Driver(task)
                driver.job = create_task(self._run_executable(driver))
        for chunk, payload in zip(chunks, payloads):
            self._submit_chunk(chunk, payload)

    def _submit_chunk(self, chunk: list[Task], payload: bytes | None = None) -> None:
        queued = self._queued
        if not self._in_processes:
            # Mark the tasks queued before the pool can start them: the runner claims each one.
            for task in chunk:
                queued[task["uid"]] = chunk
            try:
                self._executor.submit(self._run_chunk_in_thread, chunk)
            except RuntimeError as exc:  # the pool was shut down by its owner
                self._fail_chunk(chunk, exc)
            return
        if payload is None:
            payload = _pickle_chunk(chunk)
        try:
            future = self._executor.submit(_run_pickled_chunk, payload)
        except RuntimeError as exc:
            # BrokenProcessPool (a worker died, possibly while this very call was submitting)
            # or a pool shut down by its owner: the chunk's tasks fail, the call goes on.
            self._fail_chunk(chunk, exc)
            return
        future.rhapsody_chunk = chunk  # type: ignore[attr-defined]
        for task in chunk:
            queued[task["uid"]] = future
        # Added last, so a chunk that already finished still releases its tasks (callback runs now).
        future.add_done_callback(self._process_chunk_done)

    def _fail_chunk(self, chunk: list[Task], error: BaseException) -> None:
        # The pool refused the chunk or broke under it: each of its tasks fails with that error.
        release = self._queued.pop
        for task in chunk:
            release(task["uid"], None)
            task["exception"] = error
        self.report_all(chunk, _FAILED)

    # -- functions: threads ------------------------------------------------------------------

    def _run_chunk_in_thread(self, chunk: list[Task]) -> None:
        claim = self._queued.pop
        report = self.report
        value: Any = None
        for task in chunk:
            # Whoever pops the uid first owns the task: this thread (it runs) or cancel_task.
            if claim(task["uid"], None) is None:
                continue
            try:
                value = task["function"](*task["args"], **task["kwargs"])
                if inspect.iscoroutine(value):
                    value = asyncio.run(_bounded(value, task["timeout"]))
            except BaseException as exc:  # SystemExit in a task must not lose the chunk
                task["exception"] = exc
                report([(task, _FAILED)])
            else:
                task["return_value"] = value
                report([(task, _DONE)])
        # A failed task's traceback keeps this frame (each frame keeps its caller's), so a
        # program that keeps the failure would keep what is left here: the rest of the chunk.
        chunk.clear()
        del task, value

    # -- functions: processes ----------------------------------------------------------------

    def _process_chunk_done(self, future: Future[Any]) -> None:
        if future.cancelled():
            return  # cancel_task resubmitted the rest of the chunk
        chunk: list[Task] = future.rhapsody_chunk  # type: ignore[attr-defined]
        error = future.exception()
        if error is not None:
            # The pool broke or the chunk could not be unpickled: every task of it failed.
            self._fail_chunk(chunk, error)
            return
        release = self._queued.pop
        for task in chunk:
            release(task["uid"], None)
        updates = []
        for task, (ok, value) in zip(chunk, cloudpickle.loads(future.result())):
            if ok:
                task["return_value"] = value
                updates.append((task, _DONE))
            else:
                task["exception"] = value
                updates.append((task, _FAILED))
        self.report(updates)

    # -- executables -------------------------------------------------------------------------

    async def _run_executable(self, driver: _Driver) -> None:
        task = driver.task
        uid = task["uid"]
        driver.phase = _RUNNING
        options = task["task_backend_specific_kwargs"]
        process = None
        try:
            async with self._slots:  # type: ignore[union-attr]
                if options.get("shell"):
                    command = " ".join([task["executable"], *map(shlex.quote, task["arguments"])])
                    spawn = asyncio.create_subprocess_shell(
                        command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                        cwd=options.get("cwd"), env=options.get("env"), start_new_session=True,
                    )
                else:
                    spawn = asyncio.create_subprocess_exec(
                        task["executable"], *task["arguments"],
                        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                        cwd=options.get("cwd"), env=options.get("env"), start_new_session=True,
                    )
                driver.phase = _STARTING  # cancel_task now only dooms it (see _cancel_driver)
                process = await spawn
                if driver.phase is _DOOMED:
                    raise asyncio.CancelledError
                driver.phase = _RUNNING
                try:
                    out, err = await asyncio.wait_for(process.communicate(), task["timeout"])
                except asyncio.TimeoutError:
                    await _kill_group(process)
                    out, err = await process.communicate()
                    task["exception"] = TimeoutError(
                        f"task {uid} exceeded its timeout of {task['timeout']} s; its process "
                        "group was killed"
                    )
        except asyncio.CancelledError:
            if process is not None and process.returncode is None:
                await _kill_group(process)
            if process is not None:
                task["exit_code"] = process.returncode
            self._drivers.pop(uid, None)
            self.report([(task, _CANCELED)])
            return
        except Exception as exc:  # e.g. no such executable or cwd: the task fails
            self._drivers.pop(uid, None)
            task["exception"] = exc
            task["stderr"] = f"{type(exc).__name__}: {exc}"
            # A program cancelled while it was starting ends CANCELED, as cancel_task promised.
            self.report([(task, _CANCELED if driver.phase is _DOOMED else _FAILED)])
            return
        self._drivers.pop(uid, None)
        task["stdout"] = out.decode(errors="replace")
        task["stderr"] = err.decode(errors="replace")
        task["exit_code"] = code = process.returncode
        self.report([(task, _DONE if code == 0 and task["exception"] is None else _FAILED)])

    def _cancel_driver(self, driver: _Driver) -> bool:
        if driver.phase is _STARTING or driver.phase is _DOOMED:
            # Cancelling the spawn would let asyncio kill the leader alone, orphaning whatever it
            # started: the driver kills the whole group as soon as the program has started.
            driver.phase = _DOOMED
            return True
        if driver.phase is _NEW:
            # Cancelled before its first step, a coroutine never runs its own clean-up.
            driver.job.cancel()
            self._drivers.pop(driver.task["uid"], None)
            self.report([(driver.task, _CANCELED)])
            return True
        return driver.job.cancel()

    # -- cancel and shutdown -----------------------------------------------------------------

    async def cancel_task(self, task: Task) -> bool:
        uid = task["uid"]
        driver = self._drivers.get(uid)
        if driver is not None:
            return self._cancel_driver(driver)
        if self._in_processes:
            future = self._queued.get(uid)
            if future is None or not future.cancel():
                return False  # the chunk already runs (or ran): it reports the task itself
            chunk: list[Task] = future.rhapsody_chunk  # type: ignore[attr-defined]
            for member in chunk:
                self._queued.pop(member["uid"], None)
            rest = [member for member in chunk if member is not task]
            if rest:
                self._submit_chunk(rest)
        elif self._queued.pop(uid, None) is None:
            return False  # running or ended: a thread cannot be interrupted
        self.report([(task, _CANCELED)])
        return True

    async def _shutdown(self) -> None:
        drivers = list(self._drivers.values())
        for driver in drivers:
            self._cancel_driver(driver)
        if drivers:
            await asyncio.wait([driver.job for driver in drivers], timeout=_KILL_GRACE + 5)
        if not self._owns_executor:
            return
        # Queued chunks are dropped; running ones cannot be interrupted, so wait a bounded time.
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._in_processes:
            # A ProcessPoolExecutor has no public way to stop busy workers; terminate them so no
            # child outlives the session.
            for process in list(getattr(self._executor, "_processes", {}).values()):
                if process.is_alive():
                    process.terminate()


def _check_executable_options(task: Task, options: dict[str, Any]) -> None:
    unknown = set(options) - _EXECUTABLE_OPTIONS
    if unknown:
        raise ValueError(
            f"task {task['uid']}: concurrent does not understand task_backend_specific_kwargs "
            f"{sorted(unknown)} (it takes {sorted(_EXECUTABLE_OPTIONS)})"
        )
    check_process_options(task["uid"], options)


def _pickle_chunk(chunk: list[Task]) -> bytes:
    try:
        return cloudpickle.dumps([(t["function"], t["args"], t["kwargs"], t["timeout"]) for t in chunk])
    except Exception:
        for task in chunk:  # name the task that cannot be pickled
            try:
                cloudpickle.dumps((task["function"], task["args"], task["kwargs"]))
            except Exception as exc:
                raise TypeError(
                    f"task {task['uid']}: its function or arguments cannot be pickled for the "
                    f"process pool: {type(exc).__name__}: {exc}"
                ) from exc
        raise


def _chunk_size(count: int, workers: int) -> int:
    return max(1, min(_MAX_CHUNK, count // (workers * 4)))


async def _bounded(coroutine: Any, timeout: float | None) -> Any:
    if timeout is None:
        return await coroutine
    try:
        return await asyncio.wait_for(coroutine, timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"the task exceeded its timeout of {timeout} s") from None


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(process.wait(), _KILL_GRACE)
        except asyncio.TimeoutError:
            continue
        # The leader is gone; make sure nothing else it started lingers in the group.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def _run_pickled_chunk(payload: bytes) -> bytes:
    """Run a chunk of function calls in a pool process; return (ok, value) pairs, cloudpickled."""
    results: list[tuple[bool, Any]] = []
    for function, args, kwargs, timeout in cloudpickle.loads(payload):
        try:
            value = function(*args, **kwargs)
            if inspect.iscoroutine(value):
                value = asyncio.run(_bounded(value, timeout))
            results.append((True, value))
        except BaseException as exc:  # one task's SystemExit must not lose the chunk
            results.append((False, exc))
    try:
        return cloudpickle.dumps(results)
    except Exception:  # fall back item by item so only the bad result fails
        safe = []
        for ok, value in results:
            try:
                cloudpickle.dumps(value)
                safe.append((ok, value))
            except Exception as exc:
                safe.append((False, RuntimeError(
                    f"the task's {'result' if ok else 'exception'} {value!r} cannot be pickled "
                    f"back from the worker process: {exc}")))
        return cloudpickle.dumps(safe)


@hookimpl
def rhapsody_register_backends() -> list[type[BaseBackend]]:
    return [ConcurrentBackend]
