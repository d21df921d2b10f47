"""``rhapsody.api``: the public API under the module path RHAPSODY (``rhapsody-py``) programs import.

Every name of ``rhapsody.__all__`` is here as well, so ``from rhapsody.api import ComputeTask,
Session`` keeps working. The names only RHAPSODY had (``BaseTask``, ``SessionError``, ...) are
resolved on first use: each lookup gives the class that replaces it and one
``DeprecationWarning`` saying what to write instead, or, for a name with no counterpart, an
``ImportError`` saying why and what to use. ``docs/migrating.md`` lists them all.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import rhapsody as _rhapsody

from .errors import BackendUnavailableError, SessionClosedError
from .task import Task

__all__ = list(_rhapsody.__all__)
globals().update({name: getattr(_rhapsody, name) for name in __all__})

_GUIDE = "see docs/migrating.md"


class _Renamed:
    """An old name that maps onto one of ours."""

    __slots__ = ("load", "instead")

    def __init__(self, load: Callable[[], Any], instead: str) -> None:
        self.load = load  # called at lookup, so an optional engine is imported only when named
        self.instead = instead


class _Refused:
    """An old name with no counterpart: looking it up raises ``ImportError`` with ``reason``."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _resolve(module: str, name: str, table: dict[str, _Renamed | _Refused], *, stacklevel: int = 3) -> Any:
    """The object an old ``module.name`` stands for, warning once for this lookup.

    ``stacklevel`` counts from this function to the program's line that named it (3 for a module
    ``__getattr__`` that calls this directly).

    Raises:
        ImportError: the name has no counterpart (an ``ImportError``, not an
            ``AttributeError``, so that ``from module import name`` shows the reason).
        AttributeError: ``name`` is no old name either.
    """
    entry = table.get(name)
    if entry is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    if isinstance(entry, _Refused):
        raise ImportError(f"{module}.{name} (RHAPSODY) has no counterpart in rhapsody: "
                          f"{entry.reason} ({_GUIDE})", name=module)
    value = entry.load()
    warnings.warn(f"{module}.{name} is a RHAPSODY name, deprecated: write {entry.instead} ({_GUIDE})",
                  DeprecationWarning, stacklevel=stacklevel)
    return value


def _catch_invalid() -> tuple[type[Exception], ...]:
    return (ValueError, TypeError)


_OLD_NAMES: dict[str, _Renamed | _Refused] = {
    "BaseTask": _Renamed(lambda: Task, "rhapsody.Task"),
    "SessionError": _Renamed(
        lambda: SessionClosedError,
        "rhapsody.SessionClosedError (using a closed session is the session error rhapsody raises)"),
    "BackendError": _Renamed(
        lambda: BackendUnavailableError,
        "rhapsody.BackendUnavailableError (raised when a backend is not installed or cannot run "
        "here; an engine's own failure fails the tasks it holds instead)"),
    "TaskValidationError": _Renamed(
        _catch_invalid,
        "except (ValueError, TypeError): an invalid task is refused with those. The old name now "
        "stands for that tuple, which except and isinstance accept but raise does not"),
    "ResourceError": _Renamed(
        lambda: ValueError,
        "except ValueError: a resources= request that a backend cannot honour is refused with it"),
    "TaskStateManager": _Refused(
        "the session keeps task states itself; wait with session.wait_tasks(tasks), "
        "await task, or the futures session.submit_tasks returns"),
    "BackendRegistry": _Refused(
        "rhapsody.discover_backends() lists the installed backends, rhapsody.get_backend(name) "
        "makes one, and a plugin registers new ones (rhapsody.register_plugin)"),
}
"""The names only RHAPSODY's ``rhapsody`` and ``rhapsody.api`` had, and what each now is."""


def __getattr__(name: str) -> Any:
    return _resolve(__name__, name, _OLD_NAMES)
