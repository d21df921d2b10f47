"""``BaseBackend``: the class every execution backend subclasses.

A backend turns tasks into work on an engine and tells its session, in batches, when tasks end.
The life cycle is: ``__init__`` (store options, start nothing) -> ``await backend`` (runs
``_initialize`` once) -> ``submit_tasks`` / ``cancel_task`` any number of times -> ``close()``
(runs ``_shutdown`` once). ``async with backend:`` does the first and the last of these.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import inspect
import os
import threading
import warnings
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from .inflight import Entry, InFlight
from .states import TaskState
from .task import Task


def is_async_callable(function: Any) -> bool:
    """Whether calling ``function`` returns a coroutine to await: an ``async def`` function, a
    ``functools.partial`` of one, or an object whose ``__call__`` is ``async def``."""
    while isinstance(function, functools.partial):
        function = function.func
    # The class attribute, not the instance's: Python calls type(obj).__call__.
    call = None if inspect.isroutine(function) else inspect.getattr_static(type(function), "__call__", None)
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call)


def check_process_options(uid: str, options: Mapping[str, Any]) -> None:
    """Check the types of the ``cwd``, ``env`` and ``shell`` keys of a task's options.

    For backends that run executables as local processes; each backend still decides which keys
    it accepts at all.

    Raises:
        TypeError: ``env`` is not a dict of str to str, ``cwd`` is not a path, or ``shell`` is
            not a bool (the message names the task and the key).
    """
    env = options.get("env")
    if env is not None and not (
        isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise TypeError(f"task {uid}: env must be a dict of str to str, got {env!r}")
    cwd = options.get("cwd")
    if cwd is not None and not isinstance(cwd, (str, os.PathLike)):
        raise TypeError(f"task {uid}: cwd must be a path, got {cwd!r}")
    shell = options.get("shell")
    if shell is not None and not isinstance(shell, bool):
        raise TypeError(f"task {uid}: shell must be True or False, got {shell!r}")


def _refuse_until_bound(submit: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a subclass's own ``submit_tasks`` so that a backend no session has bound refuses it.

    Without this the engine would run the tasks and then fail to report them (the report has
    nowhere to go), leaving work done for nobody and an exception nobody retrieves. Every
    subclass gets it from ``__init_subclass__``, third-party ones included, and it costs one
    attribute test per call, not per task.
    """

    checked: Callable[..., Any]
    if inspect.iscoroutinefunction(submit):
        @functools.wraps(submit)
        async def checked(self: BaseBackend, *args: Any, **kwargs: Any) -> Any:
            if self._receiver is None:
                raise RuntimeError(_unbound_message(self))
            return await submit(self, *args, **kwargs)
    else:
        # A plain method returning an awaitable: refused when called, before it can start work.
        @functools.wraps(submit)
        def checked(self: BaseBackend, *args: Any, **kwargs: Any) -> Any:
            if self._receiver is None:
                raise RuntimeError(_unbound_message(self))
            return submit(self, *args, **kwargs)

    checked._rhapsody_unbound_check = True  # type: ignore[attr-defined]
    return checked


def _unbound_message(backend: BaseBackend) -> str:
    return (f"backend {backend.name!r} is not attached to a session: give it to "
            "Session(backends=[...]) and submit through the session")


Update = tuple[Task, str]
"""One state change: the task (its result fields already filled) and its new state."""

Receiver = Callable[[Any, str | None], None]
"""Where a backend's reports go: ``receiver(updates, None)`` for a list of :data:`Update`, or
``receiver(tasks, state)`` for a sequence of tasks that all reached ``state``."""


_B = TypeVar("_B", bound="BaseBackend")


class BaseBackend(abc.ABC):
    """Abstract execution backend.

    Subclasses set the class attributes ``name`` (the registry name, unique among installed
    backends, and each instance's default name) and ``task_kinds`` (the subset of
    ``{"function", "executable", "ai"}`` they can run; a session refuses other kinds at submit),
    take ``name: str | None = None`` and call ``super().__init__(name=name)``, and implement
    :meth:`submit_tasks` and :meth:`cancel_task`, plus :meth:`_initialize` and
    :meth:`_shutdown` when they start or own anything.

    When tasks end, a backend fills their result fields — ``return_value``; ``exception`` for a
    function that raised (the original exception object); ``stdout``, ``stderr`` (str) and
    ``exit_code`` for executables — and passes them to :meth:`report` with their new state, or,
    for a sweep of tasks that all reached one state, to :meth:`report_all`.

    A backend runs tasks only for the session it was given to: until a session binds it, every
    subclass's ``submit_tasks`` raises ``RuntimeError`` before its own code runs (the check is
    added to each subclass when it is defined).

    Each instance has its own ``name`` (``self.name``): the class's unless ``name=`` is given,
    so one session can hold two instances of one backend (``name="cpu"``, ``name="io"``) and
    tasks choose one with ``backend="io"``. ``async with backend:`` awaits the backend on entry
    and closes it on exit.
    """

    # The registry name (class attribute) and the default of each instance's own ``name``.
    name: str
    task_kinds: ClassVar[frozenset[str]] = frozenset({"function", "executable"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("submit_tasks")
        if callable(own) and not hasattr(own, "_rhapsody_unbound_check"):
            cls.submit_tasks = _refuse_until_bound(own)  # type: ignore[method-assign]

    def __init__(self, *, name: str | None = None) -> None:
        """Set the instance's ``name``: ``name`` when given, else the class's registry name.

        Raises:
            TypeError: ``name`` is given but is not a non-empty string.
        """
        if name is None:
            name = type(self).name
        elif not isinstance(name, str) or not name:
            raise TypeError(f"{type(self).__name__}: name must be a non-empty string, got {name!r}")
        self.name = name
        self._receiver: Receiver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # Reports from other threads wait here for the loop, in order, as (items, state) batches
        # like the receiver's arguments.
        self._pending: list[tuple[Any, str | None]] = []
        self._pending_lock = threading.Lock()
        self._initialized = False
        self._closed = False
        # The tasks handed to the engine and not yet reported ended (see rhapsody.inflight).
        self.in_flight = InFlight()

    # -- to implement ------------------------------------------------------------------------

    @classmethod
    def check_available(cls) -> str | None:
        """Raise why this backend cannot run here (e.g. the engine's own ``ImportError``).

        Return ``None``, or a short note when the backend runs with limits (e.g. "endpoint mode
        only: no engine installed"). ``rhapsody.discover_backends()`` and ``rhapsody backends``
        show what this raises or returns. The default: the backend can always run.
        """
        return None

    @classmethod
    def engine_versions(cls) -> dict[str, str]:
        """Versions of the engine packages this backend drives, for reports.

        Read them without importing the engine (``importlib.metadata.version``). Default: none.
        """
        return {}

    async def _initialize(self) -> None:  # noqa: B027 - optional override
        """Start or connect to the engine. Called once, from ``await backend``."""

    async def check_tasks(self, tasks: Sequence[Task]) -> None:  # noqa: B027 - optional override
        """Refuse, before anything is launched, tasks this backend could never run as asked.

        A session calls this for every backend's part of a ``submit_tasks`` call before it hands
        any backend anything, so one refusal leaves the whole call unsubmitted. Check options,
        types and what the engine can never offer; hand nothing to the engine, change no task.

        Raises:
            ValueError, TypeError: a task carries options this backend cannot honour (the
                message names the task and the offending key).
        """

    @abc.abstractmethod
    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        """Hand ``tasks`` (already passed :meth:`check_tasks`) to the engine; do not wait for them.

        Raises:
            RuntimeError: the backend is not attached to a session (raised before this method
                runs; see the class docstring).
            ValueError, TypeError: still allowed, for backends that check here rather than in
                :meth:`check_tasks`: raise before handing any task over. The session treats it
                as a refusal of the whole call when no other backend has launched part of it;
                otherwise these tasks fail with the error.

        Once a task has been handed over, an engine error about it (a broken pool, a lost
        connection) must not be raised from here: fail the task through :meth:`report` with
        that error, so the tasks already handed over are never lost.
        """

    @abc.abstractmethod
    async def cancel_task(self, task: Task) -> bool:
        """Stop ``task`` if it has not ended; return ``True`` when it will end ``CANCELED``.

        A queued task must then never start; a running executable's process group is killed.
        Return ``False`` when the task can no longer be stopped (it will end normally).
        The backend reports the ``CANCELED`` state through :meth:`report`.
        """

    async def _shutdown(self) -> None:  # noqa: B027 - optional override
        """Release everything the backend started (never what it was given). Bounded in time."""

    # -- provided ----------------------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        """Whether ``_initialize`` has completed."""
        return self._initialized

    def __await__(self) -> Generator[Any, None, BaseBackend]:
        return self._ensure_initialized().__await__()

    async def _ensure_initialized(self) -> BaseBackend:
        if self._closed:
            raise RuntimeError(f"backend {self.name!r} has been closed")
        if not self._initialized:
            await self._initialize()
            self._initialized = True
        return self

    async def __aenter__(self: _B) -> _B:
        """``async with backend:`` awaits (initialises) the backend and returns it."""
        await self._ensure_initialized()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the backend, whether the block ended normally or raised."""
        await self.close()

    async def close(self) -> None:
        """Shut the backend down; later calls return at once."""
        if self._closed:
            return
        self._closed = True
        if self._initialized:
            await self._shutdown()

    async def shutdown(self) -> None:
        """RHAPSODY's name for :meth:`close`; deprecated (one ``DeprecationWarning`` per call)."""
        warnings.warn("backend.shutdown() is RHAPSODY's name, deprecated: write await "
                      "backend.close() (see docs/migrating.md)", DeprecationWarning, stacklevel=2)
        await self.close()

    def bind(self, receiver: Receiver, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the backend to a session: ``receiver`` gets every reported batch on ``loop``."""
        if self._receiver is not None and self._receiver is not receiver:
            raise RuntimeError(f"backend {self.name!r} already belongs to another session")
        self._receiver = receiver
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def report(self, updates: Sequence[Update]) -> None:
        """Tell the session that tasks changed state. Safe to call from any thread.

        Called on the session's loop thread, the batch is applied at once. From any other thread
        the batch is queued and the loop is woken once, however many batches arrive before it
        runs: engines that complete tasks from their own threads pay one cross-thread wake-up per
        sweep, not per task.
        """
        self._hand_over(updates if isinstance(updates, list) else list(updates), None)

    def report_all(self, tasks: Sequence[Task], state: str) -> None:
        """Tell the session that every task in ``tasks`` reached ``state``. Safe from any thread.

        The same as ``report([(task, state) for task in tasks])`` without building a pair per
        task: the cheapest hand-over, for a sweep of tasks that ended alike. The session does
        not keep ``tasks`` itself; the caller may reuse the sequence afterwards.
        """
        self._hand_over(tasks, state)

    def fail_in_flight(
        self,
        error: Callable[[Task], BaseException],
        *,
        where: Callable[[Entry], bool] | None = None,
    ) -> list[Entry]:
        """Fail every task still in :attr:`in_flight` (or those ``where`` accepts). Any thread.

        For when the engine itself is gone (a dead cluster, an ended pilot): each task's
        ``exception`` is set to ``error(task)`` and all are reported ``FAILED`` in one batch. A
        task whose cancel was already asked for is reported ``CANCELED`` instead. Returns the
        entries taken, so the backend can release what it kept with them.

        A :class:`rhapsody.WorkerLostError` made with ``retryable=False`` tells the session not
        to run the task again (use it when the engine can run nothing more).
        """
        taken = self.in_flight.pop_all(where)
        updates: list[Update] = []
        for entry in taken:
            if entry.cancelling:
                updates.append((entry.task, TaskState.CANCELED))
            else:
                entry.task["exception"] = error(entry.task)
                updates.append((entry.task, TaskState.FAILED))
        if updates:
            self.report(updates)
        return taken

    def _hand_over(self, items: Sequence[Any], state: str | None) -> None:
        # ``items`` and ``state`` as the receiver takes them (see Receiver).
        receiver = self._receiver
        if receiver is None:
            raise RuntimeError(f"backend {self.name!r} is not attached to a session")
        if threading.get_ident() == self._loop_thread:
            receiver(items, state)
            return
        with self._pending_lock:
            pending = self._pending
            wake = not pending
            if state is None and pending and pending[-1][1] is None:
                # Extends the list of updates that waits last: a burst of reports, one hand-over.
                pending[-1][0].extend(items)
            else:
                pending.append((list(items), state))
        if not wake:
            return
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(self._flush_pending)
        except RuntimeError:
            # The loop has closed: the session already ended every task it held.
            pass

    def _flush_pending(self) -> None:
        with self._pending_lock:
            batches, self._pending = self._pending, []
        receiver = self._receiver
        if receiver is not None:
            for items, state in batches:
                receiver(items, state)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "ready" if self._initialized else "new"
        return f"<{type(self).__name__} name={self.name!r} {state}>"
