"""Exceptions a Dask task can end with besides its own."""

from __future__ import annotations

# One type for every backend: ``except rhapsody.WorkerLostError`` and
# ``except rhapsody_dask.WorkerLostError`` catch the same failures, and the session re-runs it.
from rhapsody.errors import RhapsodyError, WorkerLostError

__all__ = ["TaskLoadError", "UnsatisfiableResourcesError", "WorkerLostError"]


class TaskLoadError(RhapsodyError, RuntimeError):
    """A Dask worker could not unpickle a task's function or arguments.

    Typically the function (or a class of an argument) lives in a module that exists only in the
    client process, such as a script run by path: workers import functions by module name.

    Attributes:
        part: ``"function"`` or ``"arguments"``.
        reason: the unpickling error, as ``"ModuleNotFoundError: No module named 'x'"``.
    """

    def __init__(self, part: str, reason: str) -> None:
        self.part = part
        self.reason = reason
        super().__init__(
            f"the Dask worker could not load the task's {part}: {reason}. Workers import a "
            "function or class by its module name: install that module where the workers run, "
            "or have it pickled by value (cloudpickle.register_pickle_by_value(module))"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.part, self.reason))


class UnsatisfiableResourcesError(RhapsodyError, RuntimeError):
    """No worker of the Dask cluster advertises the resources a task asks for.

    Attributes:
        uid: the task's uid.
        resources: what the task asked for.
        missing: the resource names no single worker can supply in the asked quantity.
    """

    def __init__(self, uid: str, resources: dict[str, float], missing: list[str], detail: str) -> None:
        self.uid = uid
        self.resources = dict(resources)
        self.missing = list(missing)
        self.detail = detail
        super().__init__(f"task {uid}: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.uid, self.resources, self.missing, self.detail))
