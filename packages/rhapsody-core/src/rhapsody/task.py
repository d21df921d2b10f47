"""The task model: ``ComputeTask`` (functions and executables) and ``AITask`` (LLM requests).

A task is a plain ``dict`` with attribute access, so it pickles, serialises to JSON (minus the
callable) and can be inspected by any tool. It is the single source of truth for its own state and
results: sessions and backends keep nothing about a task once it has ended.

A task stores only the fields that hold a value of their own; every other field of its kind reads
as its default (``None``, ``()``, or an empty mapping) through ``task[name]``, ``task.name``,
``task.get(name)`` and ``name in task``; iterating a task (``keys()``, ``dict(task)``, JSON)
shows the stored ones. A function task with no options is four entries, not fifteen: less memory,
and less work for Python's cyclic collector, which rescans every live task (a workflow that builds
a million tasks up front holds a million). The mappings ``kwargs`` and
``task_backend_specific_kwargs`` read, until set, as one shared read-only empty mapping: assign
a dict of the task's own rather than filling that one.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

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
    "gpu": 'task_backend_specific_kwargs={"resources": {"GPU": n}} (Dask) or '
    '{"process_template": {...}} (Dragon)',
    "ranks": 'task_backend_specific_kwargs={"process_templates": [(nranks, {...})]} (Dragon) or '
    '{"ranks": n} (RADICAL-Pilot)',
    "memory": 'task_backend_specific_kwargs={"resources": {"memory": bytes}} (Dask)',
    "cpu_threads": 'task_backend_specific_kwargs={"resources": {"CPU": n}} (Dask) or '
    '{"cores_per_rank": n} (RADICAL-Pilot)',
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


class Task(dict):  # type: ignore[type-arg]
    """Base class of all tasks: a dict whose keys are also attributes.

    Fields still at their default are not stored but read as it (see the module docstring).
    ``await task`` waits for a submitted task and returns it, or raises what its future raises.
    """

    __slots__ = ("_future",)

    kind: str = "task"
    # Every field of the task kind and the value it reads as while not stored.
    _defaults: ClassVar[dict[str, Any]] = {}

    def __missing__(self, key: str) -> Any:
        value = self._defaults.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """``task[key]`` for a field of the task kind; ``default`` for any other missing key."""
        value = dict.get(self, key, _MISSING)
        if value is _MISSING:
            return self._defaults.get(key, default)
        return value

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self._defaults

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
        future: asyncio.Future[Task] | None = self._future
        if future is None:
            raise RuntimeError(f"task {self['uid']} has not been submitted to a session")
        return (yield from future.__await__())

    @property
    def future(self) -> asyncio.Future[Task] | None:
        """The future a session made when the task was submitted (``None`` before)."""
        return self._future

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


def _restore_task(cls: type[Task], fields: dict[str, Any]) -> Task:
    task = cls.__new__(cls)
    dict.update(task, fields)
    _set_slot(task, "_future", None)
    return task


def _check_names(owner: str, uid: Any, backend: Any) -> None:
    for name, value in (("uid", uid), ("backend", backend)):
        if value is not None and (not isinstance(value, str) or not value):
            raise TypeError(f"{owner}: {name} must be a non-empty string, got {value!r}")


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
            (``cwd``, ``env``, ``shell``, ``resources``, ``process_template``, ...).

    Raises:
        ValueError: neither or both of ``function`` and ``executable``, or a bad ``timeout``.
        TypeError: a value of the wrong type, or a parameter RHAPSODY 0.2 ignored (``gpu``,
            ``ranks``, ``memory``, ``cpu_threads``, ``environment``, ``cwd``, ``shell``,
            ``working_directory``); the message says what to pass instead.
    """

    __slots__ = ()
    _defaults: ClassVar[dict[str, Any]] = {
        **_COMMON_FIELDS, "function": None, "executable": None, "args": (), "kwargs": _NO_OPTIONS,
        "arguments": (), "timeout": None, "retries": DEFAULT_RETRIES, "retry_exceptions": False,
        "retried": 0,
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
        backend: str | None = None,
        timeout: float | None = None,
        retries: int = DEFAULT_RETRIES,
        retry_exceptions: bool | tuple[type[BaseException], ...] = False,
        task_backend_specific_kwargs: Mapping[str, Any] | None = None,
        **removed: Any,
    ) -> None:
        if removed:
            _reject_unknown(type(self), removed)
        if uid is not None or backend is not None:
            _check_names("ComputeTask", uid, backend)
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
        _set_slot(self, "_future", None)

    @property
    def kind(self) -> str:  # type: ignore[override]
        """``"function"`` or ``"executable"``."""
        return "executable" if dict.get(self, "function") is None else "function"


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
        uid, backend, task_backend_specific_kwargs: as for ``ComputeTask``.

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
        for name, value in (("max_tokens", max_tokens), ("top_k", top_k)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"AITask: {name} must be an integer, got {value!r}")
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
