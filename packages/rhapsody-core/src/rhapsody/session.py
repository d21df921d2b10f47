"""``Session``: submit tasks to backends, wait for them, cancel them.

The session keeps exactly one thing per task, and only while the task runs: an entry in its
in-flight table. The task itself holds its state, results and future; when a backend reports that
a task ended, the session sets the state, resolves the future and forgets the task.
"""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any

from . import plugins
from .backend import BaseBackend, Update
from .errors import SessionClosedError, TaskExecutionError, WorkerLostError
from .plugins import get_backend, hook_if_implemented
from .records.recording import RecordSet
from .states import TERMINAL_STATES, TaskState
from .task import ComputeTask, Task, _set_slot, _WeakRef

_DONE, _FAILED, _CANCELED = TaskState.DONE, TaskState.FAILED, TaskState.CANCELED

# Registering or ending a large batch allocates objects per task and frees nothing; meanwhile
# Python's cyclic collector would run its full pass over every live task several times (at 100K
# tasks, most of the session's own cost). These loops create no reference cycles, so for batches
# this large the collector waits until the loop ends: the same pause Mercurial's ``nogc`` makes
# around bulk container building.
_GC_PAUSE_AT = 1000


class _PausedCollector:
    """``with _PausedCollector(n):`` pauses the cyclic collector for a loop over ``n`` tasks when
    ``n`` reaches ``_GC_PAUSE_AT``, and restores it however the loop ends. A collector the
    program turned off stays off."""

    __slots__ = ("_paused",)

    def __init__(self, size: int) -> None:
        self._paused = size >= _GC_PAUSE_AT and gc.isenabled()

    def __enter__(self) -> None:
        if self._paused:
            gc.disable()

    def __exit__(self, *exc_info: object) -> None:
        if self._paused:
            gc.enable()


class Session:
    """Runs tasks on one or more backends.

    Args:
        backends: backend instances (initialised or not) or backend names. ``None`` uses the
            built-in ``concurrent`` backend. A task runs on the backend its ``backend`` field
            names, else on the first backend that runs its kind of task.
        close_timeout: seconds each backend gets to shut down in :meth:`close`.
        records: recorders for this session's tasks (:mod:`rhapsody.records`: ``Journal``,
            ``HtmlReport``, ``EventLog``, ``OtelSpans``, or any plugin object): they hear only
            this session's tasks, with ``task.timings`` stamped, and are opened when the session
            starts and closed when it closes. A task a ``Journal`` recorded DONE ends DONE at
            once with its recorded results (``task.restored``), without running.

    Use it as an async context manager (``async with Session() as session:``); it then starts
    every backend on entry and closes them on exit. The session owns its backends: closing the
    session closes them.

    Raises:
        ValueError: two backends share a name, or ``records`` holds two journals.
        TypeError: an item of ``records`` has no ``rhapsody_task_states_changed``.
    """

    def __init__(
        self,
        backends: Sequence[BaseBackend | str] | None = None,
        *,
        close_timeout: float = 60.0,
        records: Sequence[Any] | None = None,
    ) -> None:
        if backends is not None and not backends:
            raise ValueError("Session(backends=[]) has no backend; pass None for the built-in "
                             "'concurrent' backend, or name at least one")
        chosen = list(backends) if backends is not None else ["concurrent"]
        self._backends: dict[str, BaseBackend] = {}
        for item in chosen:
            backend = get_backend(item) if isinstance(item, str) else item
            if not isinstance(backend, BaseBackend):
                raise TypeError(f"Session: {backend!r} is not a backend instance or name")
            if backend.name in self._backends:
                raise ValueError(f"Session: two backends are named {backend.name!r}")
            self._backends[backend.name] = backend
        self._by_kind: dict[str, BaseBackend] = {}
        for backend in self._backends.values():
            for kind in backend.task_kinds:
                self._by_kind.setdefault(kind, backend)
        # The backend every ComputeTask without a backend name goes to, when functions and
        # executables go to the same one (the usual case): no kind to work out per task.
        runs_functions = self._by_kind.get("function")
        self._compute_backend = (
            runs_functions if runs_functions is self._by_kind.get("executable") else None
        )
        self._inflight: dict[str, Task] = {}
        # Failed tasks that run again (see _take_for_retry), by backend, until resubmitted.
        self._retrying: dict[BaseBackend, list[Task]] = {}
        self._retry_jobs: set[asyncio.Task[None]] = set()
        self._close_timeout = close_timeout
        self._records: RecordSet | None = RecordSet(records) if records else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future_factory: Callable[[], asyncio.Future[Task]] = _not_started
        self._started = False
        self._closed = False
        # Reports a backend makes while the session is inside its submit_tasks (e.g. from the
        # loop thread, synchronously) wait here, so plugins hear of a submission before its end.
        self._submitting = 0
        self._held: list[tuple[Any, str | None]] = []
        # Tasks whose failure is final whatever their retries: running them again failed.
        self._final: set[Task] = set()
        # Looked up again only when plugins change: an unimplemented hook then costs one
        # attribute test per batch.
        self._hook_generation = -1
        self._validate: Any = None
        self._notify: Any = None
        self._refresh_hooks()

    def _refresh_hooks(self) -> None:
        self._validate = hook_if_implemented("rhapsody_validate_task")
        self._notify = hook_if_implemented("rhapsody_task_states_changed")
        if self._records is not None:
            self._notify = self._records.notifier(self._notify)
        self._hook_generation = plugins.generation

    @property
    def backends(self) -> dict[str, BaseBackend]:
        """The session's backends by name."""
        return dict(self._backends)

    @property
    def in_flight(self) -> int:
        """How many submitted tasks have not ended yet."""
        return len(self._inflight)

    async def __aenter__(self) -> Session:
        try:
            await self.start()
        except BaseException:
            # __aexit__ will not run: release the backends that did start before re-raising.
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def start(self) -> None:
        """Initialise every backend that is not yet initialised (``submit_tasks`` calls this)."""
        if self._closed:
            raise SessionClosedError("this session has been closed")
        if self._started:
            return
        self._loop = loop = asyncio.get_running_loop()
        # The stdlib loops' create_future() is a Python-level wrapper around Future(loop=...);
        # calling the C constructor directly saves that frame per task. Other loops keep theirs.
        if type(loop).create_future is asyncio.BaseEventLoop.create_future:
            self._future_factory = functools.partial(asyncio.Future, loop=loop)
        else:
            self._future_factory = loop.create_future
        if self._records is not None:
            self._records.open()
        for backend in self._backends.values():
            backend.bind(self._receive, self._loop)
            await backend
        self._started = True

    # -- submit ------------------------------------------------------------------------------

    def _route(self, task: Task) -> BaseBackend:
        name = task["backend"]
        if name is None:
            backend = self._by_kind.get(task.kind)
            if backend is None:
                raise ValueError(
                    f"task {task['uid']}: no backend of this session runs {task.kind} tasks "
                    f"(backends: {', '.join(self._backends)})"
                )
            return backend
        backend = self._backends.get(name)
        if backend is None:
            raise ValueError(
                f"task {task['uid']} asks for backend {name!r}, which this session does not "
                f"have (it has: {', '.join(self._backends)})"
            )
        if task.kind not in backend.task_kinds:
            raise ValueError(
                f"task {task['uid']}: backend {name!r} does not run {task.kind} tasks "
                f"(it runs: {', '.join(sorted(backend.task_kinds))})"
            )
        return backend

    async def submit_tasks(self, tasks: Iterable[Task]) -> list[asyncio.Future[Task]]:
        """Submit tasks and return one future per task, in order.

        A future resolves to its task when the task ends ``DONE``; it raises the function's own
        exception, or :class:`TaskExecutionError` for an executable that exited non-zero, when
        the task ends ``FAILED``; it is cancelled when the task ends ``CANCELED``.

        Raises:
            TypeError: an item is not a task.
            ValueError: a task was already submitted, names a backend the session does not have,
                or is refused by a backend (its ``check_tasks``) or a validating plugin. Then no
                task of this call has been submitted, to any backend: every task is ``NEW`` again
                and can be submitted once corrected, and the session keeps working.

        Submitting is all or nothing: every task of the call is checked (by the session, the
        plugins and each backend's ``check_tasks``) before any backend is handed any. An engine
        that fails while launching its part after another backend has started its own fails
        those tasks (``FAILED``, with the engine's error) rather than raising.
            SessionClosedError: the session has been closed.
            RuntimeError: called from an event loop other than the one the session started on.
        """
        if not self._started:
            await self.start()
        if self._closed:
            raise SessionClosedError("cannot submit to a closed session")
        self._check_loop()
        tasks = tasks if isinstance(tasks, list) else list(tasks)
        if self._hook_generation != plugins.generation:
            self._refresh_hooks()
        with _PausedCollector(len(tasks)):
            groups, futures, named = self._register(tasks)

        handed = list(groups.items())
        try:
            for backend, group in handed:
                await backend.check_tasks(group)
        except BaseException:
            for task in tasks:
                self._unregister(task, named)
            raise
        # Tasks a journal recorded DONE reach no backend: they end below, once the rest of the
        # call is handed over, and are undone with it if a backend refuses its part.
        restored = [] if self._records is None else self._records.recorded(g for _, g in handed)
        kept_back: list[tuple[BaseBackend | None, list[Task]]] = []
        if restored:
            handed = [(backend, group) for backend, group in handed if group]
            kept_back.append((None, [task for task, _ in restored]))
        for index, (backend, group) in enumerate(handed):
            self._submitting += 1
            try:
                await backend.submit_tasks(group)
            except Exception as exc:
                self._submitting -= 1
                if index == 0:
                    # Nothing of this call runs yet: a refusal, as from check_tasks (a backend
                    # that checks inside submit_tasks refuses here).
                    self._undo(group, [*handed[1:], *kept_back], named)
                    raise
                # Other backends already run their part of this call: this part fails instead.
                self._fail_launch(backend, group, exc)
                continue
            except BaseException:
                self._submitting -= 1
                self._undo(group, [*handed[index + 1:], *kept_back], named)
                raise
            self._submitting -= 1
            if self._notify is not None:
                self._notify(tasks=group)
            self._release_held()
        if restored:
            self._restore(restored)
        return futures

    def _restore(self, restored: list[tuple[Task, dict[str, Any]]]) -> None:
        tasks = []
        for task, results in restored:
            task.update(results)
            tasks.append(task)
        if self._notify is not None:
            self._notify(tasks=tasks)  # plugins hear of a submission first, as for every task
        self._apply(tasks, _DONE)

    def _undo(self, group: list[Task], later: Sequence[tuple[BaseBackend | None, list[Task]]],
              named: set[Task]) -> None:
        # This group (what its backend did not already end) and every group not yet handed over.
        undo = [task for task in group if task["state"] == TaskState.SUBMITTED]
        undo += [task for _, tasks in later for task in tasks]
        for task in undo:
            self._unregister(task, named)
        self._release_held()

    def _fail_launch(self, backend: BaseBackend, group: list[Task], error: Exception) -> None:
        if self._notify is not None:
            self._notify(tasks=group)  # plugins hear of every task that ends, submitted first
        self._release_held()
        left = [task for task in group if self._inflight.get(task["uid"]) is task]
        for task in left:
            if task["exception"] is None:
                failure = RuntimeError(
                    f"task {task['uid']}: backend {backend.name!r} failed while launching it: "
                    f"{type(error).__name__}: {error}")
                failure.__cause__ = error
                task["exception"] = failure
        if left:
            self._apply(left, _FAILED)

    def _register(
        self, tasks: list[Task]
    ) -> tuple[dict[BaseBackend, list[Task]], list[asyncio.Future[Task]], set[Task]]:
        """Check, route, register and mark each task, in one pass; undo them all on any error.

        Returns the tasks grouped by backend, their futures in order, and the tasks that came
        with a backend name (an undo leaves them pinned to it).
        """
        inflight = self._inflight
        by_kind = self._by_kind
        compute_backend = self._compute_backend
        validate = self._validate
        create_future = self._future_factory
        set_future = _set_slot
        submitted = TaskState.SUBMITTED
        groups: dict[BaseBackend, list[Task]] = {}
        futures: list[asyncio.Future[Task]] = []
        named: set[Task] = set()
        # One pass is also one trip of each task through the CPU cache, at a hundred thousand
        # tasks a measurable part of the cost.
        try:
            for task in tasks:
                if not isinstance(task, Task):
                    raise TypeError(f"submit_tasks takes tasks, got {type(task).__name__}: {task!r}")
                uid = task["uid"]
                if task._future is not None:
                    raise ValueError(f"task {uid} has already been submitted; make a new task")
                if task["backend"] is None:
                    if compute_backend is not None and type(task) is ComputeTask:
                        backend = compute_backend
                    else:
                        backend = by_kind.get(task.kind) or self._route(task)
                else:
                    backend = self._route(task)
                    named.add(task)
                if validate is not None:
                    validate(task=task, backend=backend)
                future = create_future()
                set_future(task, "_future", future)
                futures.append(future)
                # Registers the uid and finds a duplicate in one lookup of a table that can hold
                # millions.
                if inflight.setdefault(uid, task) is not task:
                    raise ValueError(
                        f"task uid {uid!r} is used twice: by another task in flight or earlier "
                        "in this call"
                    )
                task["backend"] = backend.name
                task["state"] = submitted
                group = groups.get(backend)
                if group is None:
                    groups[backend] = [task]
                else:
                    group.append(task)
        except BaseException:
            # The tasks registered so far are the first ones, one future each.
            for task in tasks[:len(futures)]:
                self._unregister(task, named)
            raise
        return groups, futures, named

    def _unregister(self, task: Task, named: set[Task]) -> None:
        # Back to how the caller made it: unsubmitted, NEW, pinned to a backend only if it was.
        if self._inflight.get(task["uid"]) is task:  # not the other task a duplicate uid names
            del self._inflight[task["uid"]]
        _set_slot(task, "_future", None)
        task["state"] = TaskState.NEW
        if task not in named:
            task["backend"] = None

    # -- completions (always on the loop thread) ---------------------------------------------

    def _release_held(self) -> None:
        if self._held and not self._submitting:
            held, self._held = self._held, []
            for items, state in held:
                self._apply(items, state)

    def _receive(self, items: Any, state: str | None) -> None:
        # ``items``: a list of (task, state) updates when ``state`` is None, else tasks that all
        # reached ``state`` (BaseBackend.report_all). Held batches are copies: the backend may
        # reuse its list once the report returns.
        if self._submitting:
            self._held.append((list(items), state))
        else:
            self._apply(items, state)

    def _apply(self, items: Sequence[Any], state: str | None) -> None:
        inflight_pop = self._inflight.pop
        set_slot, weak = _set_slot, _WeakRef
        with _PausedCollector(len(items)):
            for task, new in _pairs(items, state):
                if new not in TERMINAL_STATES:
                    if task["state"] not in TERMINAL_STATES:
                        task["state"] = new
                    continue
                if new == _FAILED:
                    if self._final and task in self._final:
                        self._final.discard(task)
                    elif _wants_retry(task) and self._take_for_retry(task):
                        continue
                # A late report for a task that already ended (e.g. cancelled on close) is ignored.
                if inflight_pop(task["uid"], None) is None:
                    continue
                task["state"] = new
                future = task._future
                if future is None:
                    continue
                try:
                    if new == _DONE:
                        future.set_result(task)
                        # The future now holds the task: a weak way back, so a DONE task the
                        # program drops is freed at once, not by the cyclic collector.
                        set_slot(task, "_future", weak(future))
                    elif new == _FAILED:
                        future.set_exception(_failure_of(task))
                    else:
                        future.cancel()
                except asyncio.InvalidStateError:
                    pass  # the program cancelled this future itself; the task's state still counts
        if self._hook_generation != plugins.generation:
            self._refresh_hooks()
        if self._notify is not None:
            # Late reports that were ignored above changed nothing: plugins must not count them.
            changed = [task for task, new in _pairs(items, state) if task["state"] == new]
            if changed:
                self._notify(tasks=changed)

    # -- retries -----------------------------------------------------------------------------

    def _take_for_retry(self, task: Task) -> bool:
        """Queue a failed task to run again on its backend; False leaves the failure final."""
        if self._closed or self._inflight.get(task["uid"]) is not task:
            return False
        task["retried"] = task["retried"] + 1
        for field in _RESULT_FIELDS:
            dict.pop(task, field, None)
        task["state"] = TaskState.SUBMITTED
        backend = self._backends[task["backend"]]
        waiting = self._retrying.get(backend)
        if waiting is None:
            # One resubmission per backend for everything that fails in this turn of the loop.
            self._retrying[backend] = [task]
            job = self._loop.create_task(self._resubmit(backend))  # type: ignore[union-attr]
            self._retry_jobs.add(job)
            job.add_done_callback(self._retry_jobs.discard)
        else:
            waiting.append(task)
        return True

    async def _resubmit(self, backend: BaseBackend) -> None:
        tasks = self._retrying.pop(backend, [])
        # A task cancelled (or abandoned on close) while it waited here has already ended.
        tasks = [task for task in tasks if self._inflight.get(task["uid"]) is task]
        if not tasks:
            return
        self._submitting += 1
        try:
            await backend.submit_tasks(tasks)
        except Exception as exc:
            for task in tasks:
                error = RuntimeError(
                    f"task {task['uid']}: running it again (retry {task['retried']} of "
                    f"{task['retries']}) failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                task["exception"] = error
            self._final.update(tasks)
            self._held.append((tasks, _FAILED))
        finally:
            self._submitting -= 1
            self._release_held()

    # -- wait and cancel ---------------------------------------------------------------------

    async def wait_tasks(self, tasks: Iterable[Task], timeout: float | None = None) -> list[Task]:
        """Wait until every task has ended and return them; never raises because a task failed.

        Read each task's ``state``, ``return_value``, ``exception``, ``stdout``, ``stderr`` and
        ``exit_code`` afterwards. Returns as soon as the last task ends.

        Raises:
            TimeoutError: not every task ended within ``timeout`` seconds (the message says how
                many did); the tasks keep running.
            ValueError: a task was never submitted.
        """
        self._check_loop()
        tasks = tasks if isinstance(tasks, list) else list(tasks)
        futures = []
        for task in tasks:
            future = task._future
            if future is None:
                raise ValueError(f"task {task['uid']} was never submitted to a session")
            if type(future) is not _WeakRef and not future.done():  # a weak one: DONE
                futures.append(future)
        if futures:
            _, pending = await asyncio.wait(futures, timeout=timeout)
            if pending:
                raise TimeoutError(
                    f"{len(tasks) - len(pending)} of {len(tasks)} tasks ended within {timeout} s; "
                    f"{len(pending)} still running"
                )
        for task in tasks:
            future = task._future
            # Failures are recorded on the task: mark them seen so asyncio does not log them.
            if type(future) is not _WeakRef and not future.cancelled():
                future.exception()
        return tasks

    async def cancel_task(self, task: Task | str, *, grace: float = 30.0) -> bool:
        """Cancel a task (or the task with that uid) that has not ended.

        Returns ``True`` when the task ended ``CANCELED`` (a queued task never starts; a running
        executable's whole process group is killed), ``False`` when it had already ended or its
        backend could no longer stop it (it then ends normally).

        Raises:
            KeyError: no task with that uid is running in this session.
            RuntimeError: called from an event loop other than the session's.
        """
        self._check_loop()
        if isinstance(task, str):
            found = self._inflight.get(task)
            if found is None:
                raise KeyError(f"no task with uid {task!r} is running in this session")
            task = found
        elif task["uid"] not in self._inflight:
            return task["state"] == _CANCELED
        backend = self._backends[task["backend"]]
        waiting = self._retrying.get(backend)
        if waiting is not None and task in waiting:
            # Between a lost worker and its re-run: the backend does not hold it.
            waiting.remove(task)
            self._apply([task], _CANCELED)
            return True
        if not await backend.cancel_task(task):
            return False
        future = task.future
        if future is not None and not future.done():
            # Backends report the cancellation themselves; give them a bounded moment.
            await asyncio.wait([future], timeout=grace)
        return task["state"] == _CANCELED

    def _check_loop(self) -> None:
        # A session's futures and its backends' wake-ups belong to the loop it started on; used
        # from another loop (a second asyncio.run, another thread) they would never resolve.
        loop = asyncio.get_running_loop()
        if loop is self._loop or self._loop is None:
            return
        where = "which has been closed" if self._loop.is_closed() else "which is still running"
        raise RuntimeError(
            f"this session belongs to the event loop it was started on ({where}); it cannot be "
            "used from another event loop. Create and use a Session inside one loop, e.g. "
            "within a single asyncio.run(main())"
        )

    async def close(self) -> None:
        """Cancel what still runs, close every backend (each within ``close_timeout``).

        Idempotent. Every task still in flight ends ``CANCELED``; no task is left unresolved.
        """
        if self._closed:
            return
        self._closed = True
        for job in list(self._retry_jobs):
            job.cancel()  # its tasks are abandoned below with the rest
        error: Exception | None = None
        try:
            for backend in self._backends.values():
                try:
                    await asyncio.wait_for(backend.close(), self._close_timeout)
                except Exception as exc:  # abandon its tasks, close the others, then re-raise
                    await self._abandon_inflight(backend)
                    error = error or exc
        finally:
            await self._abandon_inflight(None)
            if self._records is not None:
                self._records.close()  # after the last task ended: reports are complete
        if error is not None:
            raise error

    async def _abandon_inflight(self, backend: BaseBackend | None) -> None:
        # Let reports already queued by engine threads arrive before declaring tasks abandoned.
        await asyncio.sleep(0)
        left = [t for t in self._inflight.values()
                if backend is None or t["backend"] == backend.name]
        if left:
            for task in left:
                if task["exception"] is None:
                    task["exception"] = SessionClosedError(
                        f"task {task['uid']} was still running when its session closed"
                    )
            self._apply(left, _CANCELED)


_RESULT_FIELDS = ("return_value", "exception", "stdout", "stderr", "exit_code")


def _wants_retry(task: Task) -> bool:
    """Whether a task that just failed may run again (its ``retries`` and ``retry_exceptions``)."""
    if task.get("retried", 0) >= task.get("retries", 0):
        return False
    error = task["exception"]
    if isinstance(error, WorkerLostError):
        return error.retryable
    policy = task.get("retry_exceptions", False)
    if policy is True:
        return True
    return bool(policy) and isinstance(_failure_of(task), policy)


def _pairs(items: Sequence[Any], state: str | None) -> Iterator[Update]:
    # zip reuses its result tuple when the loop drops it, so a uniform batch allocates no pair.
    return iter(items) if state is None else zip(items, repeat(state))


def _not_started() -> asyncio.Future[Task]:
    raise RuntimeError("the session has not been started")


def _failure_of(task: Task) -> BaseException:
    exc = task["exception"]
    if exc is None:
        exc = TaskExecutionError(task["uid"], task["stderr"] or "", task["exit_code"])
        task["exception"] = exc
    elif isinstance(exc, StopIteration):
        # asyncio futures refuse StopIteration (set_exception raises TypeError, leaving the
        # future unresolved); wrap it as PEP 479 does for generators. The task keeps the original.
        wrapped = RuntimeError(f"task {task['uid']} raised StopIteration")
        wrapped.__cause__ = exc
        return wrapped
    return exc  # type: ignore[no-any-return]
