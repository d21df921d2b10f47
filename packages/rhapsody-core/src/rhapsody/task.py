"""The task model: ``ComputeTask`` (functions and executables) and ``AITask`` (LLM requests).

A task is a plain ``dict`` with attribute access, so it pickles, serialises to JSON (minus the
callable) and can be inspected by any tool. It is the single source of truth for its own state and
results: sessions and backends keep nothing about a task once it has ended.

A task stores only the fields that hold a value of their own; every other field of its kind reads
as its default (``None``, ``()``, or an empty mapping) through ``task[name]``, ``task.name`` and
``task.get(name)``. A function task with no options is four entries, not fifteen: less memory,
and less work for Python's cyclic collector, which rescans every live task (a workflow that builds
a million tasks up front holds a million). The mappings ``kwargs`` and
``task_backend_specific_kwargs`` read, until set, as one shared read-only empty mapping: assign
a dict of the task's own rather than filling that one.

The mapping a task *is* holds its stored fields, and every mapping operation agrees on them:
``name in task``, ``keys()``, iteration, ``len(task)``, ``dict(task)``, ``task.copy()`` (a plain
dict) and ``copy.copy(task)`` (a task) all see the same keys; only reading a field (``task[name]``,
``task.name``, ``get``) falls back to the kind's default. ``"stdout" in task`` is therefore false
until a backend sets it: ask ``task.stdout is not None`` for "has output".

Tasks hash and compare by identity: they are kept in sets and as dict keys (in flight, grouped
by backend, by plugins) while their fields change, and ``a == b`` must imply
``hash(a) == hash(b)``. Value equality would break that for a task and its copy (same fields,
two objects), so ``task == dict(task)`` is false by design. Compare values with ``dict(a) ==
dict(b)`` (the stored fields, as they are) or ``a.to_dict() == b.to_dict()`` (the portable form).

:meth:`Task.to_dict` and :meth:`Task.from_dict` turn a task into plain JSON/YAML data and back
(see there for how functions and results are written).

A DONE task and its future must not form a reference cycle (task -> future -> task, the future's
result), or a task the program dropped waits for the cyclic collector instead of being freed at
once. So a task's ``_future`` slot holds the future strongly only while it may still be needed
to resolve it (in flight; a FAILED or CANCELED task's future holds no task): once a session has
resolved a DONE task's future, it leaves a weak reference to it there (``_WeakRef``).
``task.future`` and ``await task`` read through it: while the program holds the session's future,
``task.future`` is that one; once it has been dropped, an equivalent future resolved with the task
is made on demand. (A plain slot keeps submission free of any Python call per task.)
"""

from __future__ import annotations

import importlib
import itertools
import math
import os
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .resources import check_request
from .states import TaskState

if TYPE_CHECKING:
    import asyncio

# next() on itertools.count is atomic under the GIL, so uids stay unique across threads; the pid
# keeps them unique when workflows in several processes write to one place.
_uid_counter = itertools.count(1)
_uid_prefix = f"task.{os.getpid()}."

# Parameters that RHAPSODY 0.2 accepted but no backend ever honoured. Naming them is an error that
# says what to write instead, never a value silently kept.
_REMOVED_PARAMETERS: dict[str, str] = {
    "gpu": 'resources={"gpus_per_rank": n} (ComputeTask; honoured or refused by every backend)',
    "ranks": 'resources={"ranks": n} (ComputeTask; honoured or refused by every backend)',
    "memory": 'resources={"memory_per_rank": mib} (ComputeTask; in MiB, honoured or refused by '
    "every backend)",
    "cpu_threads": 'resources={"cores_per_rank": n} (ComputeTask; honoured or refused by every '
    "backend)",
    "environment": 'task_backend_specific_kwargs={"env": {...}}',
    "env": 'task_backend_specific_kwargs={"env": {...}}',
    "cwd": 'task_backend_specific_kwargs={"cwd": "/path"} (or {"process_template": {"cwd": ...}} '
    "on Dragon)",
    "working_directory": 'task_backend_specific_kwargs={"cwd": "/path"}',
    "shell": 'task_backend_specific_kwargs={"shell": True}',
}


def _reject_unknown(cls: type, extra: Mapping[str, Any]) -> None:
    name = next(iter(extra))
    hint = _REMOVED_PARAMETERS.get(name)
    if hint is not None:
        raise TypeError(
            f"{cls.__name__}() no longer takes {name}=: no backend ever honoured it. Pass {hint}."
        )
    raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {name!r}")


class _EmptyOptions(dict):  # type: ignore[type-arg]
    """The one empty, read-only mapping that unset ``kwargs`` and ``task_backend_specific_kwargs``
    read as. Shared by every task, so a task without options allocates none."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "this task's field holds no mapping of its own yet (it reads as a shared empty one); "
            "assign one instead, e.g. task.task_backend_specific_kwargs = {'cwd': '/tmp'}"
        )

    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    update = setdefault = pop = popitem = clear = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        # Copies (pickle, copy, deepcopy) are ordinary dicts of their own.
        return (dict, ())

    def __repr__(self) -> str:
        return "{}"


_NO_OPTIONS: dict[str, Any] = _EmptyOptions()
_MISSING: Any = object()
_set_slot = object.__setattr__  # sets a task's ``_future`` slot past its __setattr__

_WeakRef = weakref.ref
"""What a session leaves in a DONE task's ``_future`` slot: a weak reference to its future."""
_spare_loop: asyncio.AbstractEventLoop | None = None


def _revive(task: Task) -> asyncio.Future[Task]:
    """A future resolved as the task's first one was, for a task whose first one is gone.

    It belongs to the running loop (a session's tasks are awaited on the session's loop) or,
    when no loop runs, to a private loop that never runs: its result can still be read.
    """
    global _spare_loop
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        if _spare_loop is None:
            _spare_loop = asyncio.new_event_loop()
        loop = _spare_loop
    future: asyncio.Future[Task] = loop.create_future()
    state = task["state"]
    if state == TaskState.DONE:
        future.set_result(task)
    elif state == TaskState.FAILED:
        from .session import _failure_of  # the session's own rule; imported late (a cycle)

        future.set_exception(_failure_of(task))
        future.exception()  # read here, so that asyncio does not log it as never retrieved
    elif state == TaskState.CANCELED:
        future.cancel()
    else:
        return future  # not ended (its state was set back by hand): a pending future
    _set_slot(task, "_future", _WeakRef(future))
    return future


class Task(dict):  # type: ignore[type-arg]
    """Base class of all tasks: a dict whose keys are also attributes.

    Fields still at their default are not stored but read as it; ``in``, ``keys()``, ``len`` and
    iteration see only stored fields; tasks compare and hash by identity (see the module
    docstring). ``await task`` waits for a submitted task and returns it, or raises what its
    future raises.
    """

    # The session's future for the task: None before submission; the future itself while the
    # task is in flight (and after it FAILED or was CANCELED: such a future holds no task); a
    # weak reference to it once the task is DONE (see the module docstring).
    __slots__ = ("_future",)

    kind: str = "task"
    # Every field of the task kind and the value it reads as while not stored.
    _defaults: ClassVar[dict[str, Any]] = {}

    def _default(self, key: str, fallback: Any) -> Any:
        # What an unset field reads as (``fallback`` for a key that is no field of the kind).
        return self._defaults.get(key, fallback)

    def __missing__(self, key: str) -> Any:
        value = self._default(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """``task[key]`` for a field of the task kind; ``default`` for any other missing key."""
        value = dict.get(self, key, _MISSING)
        if value is _MISSING:
            return self._default(key, default)
        return value

    # Attribute access maps onto the dict, so ``task.state`` and ``task["state"]`` are one value.
    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __await__(self) -> Generator[Any, None, Task]:
        future = self.future
        if future is None:
            raise RuntimeError(f"task {self['uid']} has not been submitted to a session")
        return (yield from future.__await__())

    @property
    def future(self) -> asyncio.Future[Task] | None:
        """The future a session made when the task was submitted (``None`` before).

        Once the task is DONE and the program has dropped that future, an equivalent one,
        resolved with the task.
        """
        held: Any = self._future
        if type(held) is _WeakRef:
            future = held()
            return future if future is not None else _revive(self)  # type: ignore[no-any-return]
        return held  # type: ignore[no-any-return]

    # The future belongs to one event loop and never travels with the task.
    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_task, (type(self), dict(self)))

    def __copy__(self) -> Task:
        return _restore_task(type(self), dict(self))

    def __hash__(self) -> int:  # type: ignore[override]
        # Identity hashing lets tasks live in sets and as dict keys while their fields change.
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __repr__(self) -> str:
        return f"{type(self).__name__}(uid={self['uid']!r}, kind={self.kind!r}, state={self['state']!r})"

    @property
    def done(self) -> bool:
        """Whether the task has reached ``DONE``, ``FAILED`` or ``CANCELED``."""
        return self["state"] in ("DONE", "FAILED", "CANCELED")

    # -- plain data --------------------------------------------------------------------------

    def to_dict(self, include_results: bool = False) -> dict[str, Any]:
        """The task as plain data for JSON or YAML: what :meth:`from_dict` makes it again from.

        Holds ``kind`` (``"function"``, ``"executable"`` or ``"ai"``) and the fields the task
        stores, except run-time ones: ``state``, ``retried`` and the result fields are left out
        unless ``include_results`` is true. Tuples become lists. A function is written as
        ``"module:qualname"``, and exception types in ``retry_exceptions`` the same way; with
        ``include_results``, ``exception`` is written as ``"TypeName: message"`` (exception
        objects are not data). Field values the program chose (``args``, ``kwargs``,
        ``return_value``, options) are copied as they are: they must be JSON values themselves
        for the result to serialise.

        Raises:
            TypeError: the function (or an exception type) cannot be imported back by name: a
                lambda, a function defined inside another, or one whose module is ``__main__``
                of a script other processes cannot import (the message names the task).
        """
        data: dict[str, Any] = {"kind": self.kind}
        for key, value in dict.items(self):
            if key in _RUNTIME_FIELDS and not include_results:
                continue
            data[key] = _to_data(self, key, value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        """Make a new, unsubmitted task from :meth:`to_dict`'s data (e.g. read from JSON/YAML).

        ``Task.from_dict`` makes the class its ``kind`` names; ``ComputeTask.from_dict`` and
        ``AITask.from_dict`` check that it is theirs. The task is validated as its constructor
        validates; ``uid`` is kept; result fields and fields of the program's own (``task.note``)
        present in ``data`` are stored as given, and the task is ``NEW`` whatever ``state``
        says (a new task can be submitted again).

        Raises:
            ValueError: ``kind`` is missing or unknown, or names another class; or a value the
                constructor refuses.
            TypeError: a function reference that is not ``"module:qualname"``, or a value of
                the wrong type.
            ImportError, AttributeError: a function reference that cannot be imported here.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"from_dict takes a mapping, got {type(data).__name__}")
        fields = dict(data)
        kind = fields.pop("kind", None)
        target = _KIND_CLASSES.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise ValueError(f"from_dict: kind must be one of {sorted(_KIND_CLASSES)}, got {kind!r}")
        if cls is not Task and target is not cls:
            raise ValueError(f"{cls.__name__}.from_dict: the data is a {kind!r} task "
                             f"({target.__name__}); use Task.from_dict")
        # Run-time fields and the program's own extra fields (``task.note = ...``) are stored as
        # given; the others go through the constructor and its checks.
        stored = {key: fields.pop(key) for key in list(fields)
                  if key in _RUNTIME_FIELDS or key not in target._defaults}
        if "function" in fields:
            fields["function"] = _import_ref(fields["function"], "function")
        policy = fields.get("retry_exceptions")
        if isinstance(policy, list):
            fields["retry_exceptions"] = tuple(_import_ref(ref, "retry_exceptions") for ref in policy)
        if kind == "ai":
            task: Task = AITask(**fields)
        else:
            task = ComputeTask(**fields)
        stored.pop("state", None)
        for key, value in stored.items():
            if value is not None:
                dict.__setitem__(task, key, value)
        return task


# Fields a run fills in: left out of to_dict() unless include_results is asked for.
_RUNTIME_FIELDS = frozenset({"state", "retried", "return_value", "exception", "stdout", "stderr",
                             "exit_code", "response", "finish_reason", "usage",
                             "timings", "worker", "restored"})


def _reference(task: Task, key: str, obj: Any) -> str:
    """``"module:qualname"`` for a function or class that can be imported back by that name."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str)) or "<" in qualname:
        raise TypeError(
            f"task {task['uid']}: {key} {obj!r} cannot be written as data: only a function or "
            "class defined at the top level of a module can (it is written as 'module:qualname');"
            " a lambda or a nested function cannot"
        )
    try:
        found = _import_ref(f"{module}:{qualname}", key)
    except (ImportError, AttributeError, TypeError) as exc:
        raise TypeError(f"task {task['uid']}: {key} {module}:{qualname} cannot be imported back "
                        f"by name ({exc})") from None
    if found is not obj:
        raise TypeError(f"task {task['uid']}: {key} {obj!r} is not what {module}:{qualname} names")
    return f"{module}:{qualname}"


def _import_ref(ref: Any, key: str) -> Any:
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise TypeError(f"from_dict: {key} must be a 'module:qualname' string, got {ref!r}")
    module_name, qualname = ref.split(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _to_data(task: Task, key: str, value: Any) -> Any:
    if key == "function" and value is not None:
        return _reference(task, key, value)
    if key == "retry_exceptions" and isinstance(value, tuple):
        return [_reference(task, key, kind) for kind in value]
    if key == "exception" and isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _restore_task(cls: type[Task], fields: dict[str, Any]) -> Task:
    task = cls.__new__(cls)
    dict.update(task, fields)
    _set_slot(task, "_future", None)
    return task


def _check_names(owner: str, uid: Any, backend: Any) -> None:
    for name, value in (("uid", uid), ("backend", backend)):
        if value is not None and (not isinstance(value, str) or not value):
            raise TypeError(f"{owner}: {name} must be a non-empty string, got {value!r}")


def _checked_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a task's name must be a non-empty string, got {name!r}")
    return name


def _check_backend_kwargs(owner: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{owner}: task_backend_specific_kwargs must be a dict, not {type(value).__name__}"
        )
    return dict(value)


_NEW = TaskState.NEW

DEFAULT_RETRIES = 3
"""How many times a ComputeTask whose worker was lost runs again unless it says otherwise."""


def _check_retries(retries: Any, retry_exceptions: Any) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"ComputeTask: retries must be an integer >= 0, got {retries!r}")
    if isinstance(retry_exceptions, bool):
        return
    if not (isinstance(retry_exceptions, tuple) and retry_exceptions and all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in retry_exceptions)):
        raise TypeError(
            "ComputeTask: retry_exceptions must be True, False or a tuple of exception types, "
            f"got {retry_exceptions!r}"
        )

# Fields every task kind has, with the value each reads as until set.
_COMMON_FIELDS: dict[str, Any] = {
    "uid": None, "backend": None, "state": _NEW, "task_backend_specific_kwargs": _NO_OPTIONS,
    "return_value": None, "exception": None, "stdout": None, "stderr": None, "exit_code": None,
    # A human name for reports; the time the task entered each state (rhapsody.records
    # stamps it); the worker or host that ran it, where its backend says; whether a journal
    # gave its results back instead of running it.
    "name": None, "timings": None, "worker": None, "restored": False,
}


class ComputeTask(Task):
    """A Python function (sync or ``async``) or an executable to run on a backend.

    Args:
        function: a callable; ``async def`` functions are awaited by the backend.
        executable: a program (path or name on ``PATH``), or a shell command with
            ``task_backend_specific_kwargs={"shell": True}``.
        args, kwargs: positional and keyword arguments for ``function``.
        arguments: command-line arguments (strings) for ``executable``.
        uid: a unique id; generated when omitted.
        name: a name for people, shown by run reports and event logs (need not be unique).
        backend: the name of the session backend to run on; the session's first suitable
            backend when omitted.
        timeout: seconds after which the task is stopped and ends ``FAILED`` with a
            ``TimeoutError`` (executables: their whole process group is killed).
        retries: how many times the task is run again when its worker is lost
            (:class:`rhapsody.WorkerLostError`: the process, Dask worker or Dragon process running
            it died). Default 3, as Ray's ``max_retries``; 0 never re-runs it. ``task.retried``
            counts the re-runs.
        retry_exceptions: also run the task again, within the same ``retries``, when it fails
            on its own: ``True`` for any failure (an exception, a non-zero exit, a timeout), or
            a tuple of exception types. Default ``False``: a task's own failure is final.
        task_backend_specific_kwargs: options for the backend that runs the task
            (``cwd``, ``env``, ``shell``, ``resources``, ``process_template``, ...); where one
            says the same as ``resources=`` in the engine's own terms, it wins.
        resources: what the task needs, for every backend: ``{"ranks": 1, "cores_per_rank": 1,
            "gpus_per_rank": 0, "memory_per_rank": None}``, every key optional, memory in MiB,
            GPUs whole or a fraction in (0, 1) (see :mod:`rhapsody.resources`). Each backend
            honours it or refuses the task at submit.
        capture_stdio: ``True`` (the default): an executable's output is captured into
            ``stdout`` and ``stderr``. ``False``: it goes to this program's own standard output
            and error, and ``stdout``/``stderr`` stay ``None``. A function task's output is
            never captured: its ``stdout`` and ``stderr`` read ``""``.

    Raises:
        ValueError: neither or both of ``function`` and ``executable``, a bad ``timeout``, or an
            unknown ``resources`` key or a value out of range (the message names task and key).
        TypeError: a value of the wrong type, or a parameter RHAPSODY 0.2 ignored (``gpu``,
            ``ranks``, ``memory``, ``cpu_threads``, ``environment``, ``cwd``, ``shell``,
            ``working_directory``); the message says what to pass instead.
    """

    __slots__ = ()
    _defaults: ClassVar[dict[str, Any]] = {
        **_COMMON_FIELDS, "function": None, "executable": None, "args": (), "kwargs": _NO_OPTIONS,
        "arguments": (), "timeout": None, "retries": DEFAULT_RETRIES, "retry_exceptions": False,
        "retried": 0, "resources": None, "capture_stdio": True,
    }

    def __init__(
        self,
        function: Callable[..., Any] | None = None,
        *,
        executable: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        arguments: Iterable[str] = (),
        uid: str | None = None,
        name: str | None = None,
        backend: str | None = None,
        timeout: float | None = None,
        retries: int = DEFAULT_RETRIES,
        retry_exceptions: bool | tuple[type[BaseException], ...] = False,
        task_backend_specific_kwargs: Mapping[str, Any] | None = None,
        resources: Mapping[str, Any] | None = None,
        capture_stdio: bool = True,
        **removed: Any,
    ) -> None:
        if removed:
            _reject_unknown(type(self), removed)
        if uid is not None or backend is not None:
            _check_names("ComputeTask", uid, backend)
        if capture_stdio is not True and not isinstance(capture_stdio, bool):
            raise TypeError(f"ComputeTask: capture_stdio must be True or False, got {capture_stdio!r}")
        if retries != DEFAULT_RETRIES or retry_exceptions is not False:
            _check_retries(retries, retry_exceptions)
        if function is None:
            if executable is None:
                raise ValueError("ComputeTask needs a function= or an executable=")
            if not isinstance(executable, str) or not executable:
                raise TypeError(
                    f"ComputeTask: executable must be a non-empty string, got {executable!r}"
                )
            if args or kwargs:
                raise ValueError(
                    "ComputeTask: args/kwargs are for functions; pass command-line "
                    "arguments to an executable as arguments=[...]"
                )
            if isinstance(arguments, str):
                # list("-la") would silently become ["-", "l", "a"]
                raise TypeError(
                    f"ComputeTask: arguments must be a list of strings, not a string; "
                    f"write arguments=[{arguments!r}]"
                )
            arguments = list(arguments)
            for item in arguments:
                if not isinstance(item, str):
                    raise TypeError(
                        f"ComputeTask: arguments must be strings, got {item!r} "
                        f"({type(item).__name__})"
                    )
        else:
            if executable is not None:
                raise ValueError("ComputeTask takes a function= or an executable=, not both")
            if not callable(function):
                raise TypeError(f"ComputeTask: function must be callable, got {function!r}")
            if type(args) is not tuple and isinstance(args, (str, bytes)):
                # tuple("abc") would silently pass three one-letter arguments
                raise TypeError(
                    f"ComputeTask: args must be a tuple of arguments, not {type(args).__name__}; "
                    f"write args=({args!r},)"
                )
            if isinstance(args, Mapping):
                # tuple({"x": 1}) would silently pass the keys as positional arguments
                raise TypeError(
                    "ComputeTask: args takes positional arguments, not a mapping; pass keyword "
                    f"arguments as kwargs={dict(args)!r}"
                )
            if not isinstance(args, Iterable):
                raise TypeError(
                    f"ComputeTask: args must be a tuple of positional arguments, got "
                    f"{type(args).__name__} {args!r}; write args=({args!r},)"
                )
            if kwargs and not isinstance(kwargs, Mapping):
                raise TypeError(f"ComputeTask: kwargs must be a dict, got {kwargs!r}")
            if arguments:
                raise ValueError(
                    "ComputeTask: arguments=[...] is for executables; pass a function's "
                    "arguments as args=(...) and kwargs={...}"
                )
            # An immutable empty tuple: nothing to allocate or garbage-collect per function task.
            arguments = ()
        if timeout is not None and (
            isinstance(timeout, bool)
            or not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout))
        ):
            raise ValueError(f"ComputeTask: timeout must be a positive number of seconds, got {timeout!r}")
        # Only what differs from the defaults is stored (see the module docstring). ``backend``
        # always is: the session reads it for every task it routes.
        self["uid"] = uid if uid is not None else f"{_uid_prefix}{next(_uid_counter)}"
        if name is not None:
            self["name"] = _checked_name(name)
        self["backend"] = backend
        self["state"] = _NEW
        if function is not None:
            self["function"] = function
            if args:
                self["args"] = args if type(args) is tuple else tuple(args)
            if kwargs:
                self["kwargs"] = dict(kwargs)
        else:
            self["executable"] = executable
            self["arguments"] = arguments
        if timeout is not None:
            self["timeout"] = timeout
        if retries != DEFAULT_RETRIES:
            self["retries"] = retries
        if retry_exceptions is not False:
            self["retry_exceptions"] = retry_exceptions
        if task_backend_specific_kwargs is not None:
            self["task_backend_specific_kwargs"] = _check_backend_kwargs(
                "ComputeTask", task_backend_specific_kwargs)
        if resources is not None:
            request = check_request("ComputeTask", resources, uid=self["uid"])
            if request is not None:
                self["resources"] = request
        if capture_stdio is False and function is None:
            self["capture_stdio"] = False
        _set_slot(self, "_future", None)

    # A function task writes to no stream of its own: its stdout and stderr read "" (RHAPSODY's
    # result contract), an executable's None until it ran. Decided when the field is read, so
    # that no task stores them: only unset fields come here.
    def _default(self, key: str, fallback: Any) -> Any:
        value = self._defaults.get(key, fallback)
        if value is None and key in _STDIO and "function" in self:
            return ""
        return value

    @property
    def kind(self) -> str:  # type: ignore[override]
        """``"function"`` or ``"executable"``."""
        return "executable" if dict.get(self, "function") is None else "function"


_STDIO = frozenset({"stdout", "stderr"})


def _check_range(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"AITask: {name} must be a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"AITask: {name} must be in {bracket}{low}, {high}], got {value!r}")


class AITask(Task):
    """A request to a language model, run by an inference backend (e.g. ``rhapsody-vllm``).

    Args:
        prompt: one prompt, or a list of prompts answered together.
        model: the model to use; the backend's default when omitted.
        system_prompt: a system message put before each prompt.
        temperature: sampling temperature in [0, 2]; 0 is greedy.
        max_tokens: the most tokens to generate (>= 1).
        top_p: nucleus sampling mass in (0, 1].
        top_k: sample from the k most likely tokens (>= 1), or -1 for all.
        stop: a string or list of strings that end the generation.
        inference_endpoint: the URL of an OpenAI-compatible server to send this task to.
        uid, name, backend, task_backend_specific_kwargs: as for ``ComputeTask``.

    After the task ends: ``response`` (text, or a list of texts for a list of prompts),
    ``finish_reason`` and ``usage`` (token counts) are set; ``return_value`` equals ``response``.

    Raises:
        ValueError: an empty prompt, or a sampling parameter out of range.
        TypeError: a value of the wrong type, or an unknown parameter.
    """

    __slots__ = ()
    kind = "ai"
    _defaults: ClassVar[dict[str, Any]] = {
        **_COMMON_FIELDS, "prompt": None, "model": None, "system_prompt": None,
        "temperature": None, "max_tokens": None, "top_p": None, "top_k": None, "stop": None,
        "inference_endpoint": None, "response": None, "finish_reason": None, "usage": None,
    }

    def __init__(
        self,
        prompt: str | list[str],
        *,
        model: str | None = None,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop: str | list[str] | None = None,
        inference_endpoint: str | None = None,
        uid: str | None = None,
        name: str | None = None,
        backend: str | None = None,
        task_backend_specific_kwargs: Mapping[str, Any] | None = None,
        **removed: Any,
    ) -> None:
        if removed:
            _reject_unknown(type(self), removed)
        if uid is not None or backend is not None:
            _check_names("AITask", uid, backend)
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list):
            raise TypeError(f"AITask: prompt must be a string or a list of strings, got {prompt!r}")
        if not prompts:
            raise ValueError("AITask: prompt must be a non-empty string or a non-empty list of strings")
        for text in prompts:
            if not isinstance(text, str):
                raise TypeError(f"AITask: prompts must be strings, got {text!r}")
            if not text.strip():
                raise ValueError("AITask: prompt must not be empty")
        _check_range("temperature", temperature, 0.0, 2.0)
        _check_range("top_p", top_p, 0.0, 1.0, low_open=True)
        for option, value in (("max_tokens", max_tokens), ("top_k", top_k)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"AITask: {option} must be an integer, got {value!r}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"AITask: max_tokens must be an integer >= 1, got {max_tokens!r}")
        if top_k is not None and top_k < 1 and top_k != -1:
            raise ValueError(f"AITask: top_k must be an integer >= 1 (or -1 for all), got {top_k!r}")
        if stop is not None:
            stops = [stop] if isinstance(stop, str) else stop
            if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
                raise TypeError(f"AITask: stop must be a non-empty string or list of them, got {stop!r}")
        for label, given in (("model", model), ("system_prompt", system_prompt),
                             ("inference_endpoint", inference_endpoint)):
            if given is not None and not isinstance(given, str):
                raise TypeError(f"AITask: {label} must be a string, got {given!r}")
        self["uid"] = uid if uid is not None else f"{_uid_prefix}{next(_uid_counter)}"
        if name is not None:
            self["name"] = _checked_name(name)
        self["backend"] = backend
        self["state"] = _NEW
        self["prompt"] = prompt
        fields: tuple[tuple[str, Any], ...] = (
            ("model", model), ("system_prompt", system_prompt),
            ("temperature", temperature), ("max_tokens", max_tokens), ("top_p", top_p),
            ("top_k", top_k), ("stop", stop), ("inference_endpoint", inference_endpoint))
        for field, value in fields:
            if value is not None:
                self[field] = value
        if task_backend_specific_kwargs is not None:
            self["task_backend_specific_kwargs"] = _check_backend_kwargs(
                "AITask", task_backend_specific_kwargs)
        _set_slot(self, "_future", None)


_KIND_CLASSES: dict[str, type[Task]] = {"function": ComputeTask, "executable": ComputeTask, "ai": AITask}
