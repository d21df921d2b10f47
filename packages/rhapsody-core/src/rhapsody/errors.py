"""Exceptions raised by rhapsody itself (a failed function task raises its own exception).

Every one derives from :class:`RhapsodyError`, so ``except rhapsody.RhapsodyError`` catches what
rhapsody raises of its own. Bad input (a wrong type, a value out of range) is refused with plain
``TypeError`` and ``ValueError``, as Python's own functions do.
"""

from __future__ import annotations

import signal


class RhapsodyError(Exception):
    """Base class of the errors rhapsody raises of its own (not the task's own exception)."""


class TaskExecutionError(RhapsodyError):
    """An executable task ended with a non-zero exit status (or a backend could not run it).

    Attributes:
        uid: the task's uid.
        stderr: what the process wrote to standard error (may be empty).
        exit_code: the process's exit status, or ``None`` when it never ran.
    """

    def __init__(self, uid: str, stderr: str = "", exit_code: int | None = None) -> None:
        self.uid = uid
        self.stderr = stderr
        self.exit_code = exit_code
        tail = stderr.strip().splitlines()[-1:] if stderr else []
        detail = f": {tail[0]}" if tail else ""
        if exit_code is None:
            super().__init__(f"task {uid} could not run{detail}")
        else:
            super().__init__(f"task {uid} failed with exit code {exit_code}{detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.uid, self.stderr, self.exit_code))


class WorkerLostError(RhapsodyError, RuntimeError):
    """The worker (process, Dask worker, Dragon process) running a task died before the task ended.

    It is not the task's own exception: the task may have been healthy and its worker killed from
    outside, or the task itself may have ended its process (``os._exit``, a signal, a crash in C
    code). A session runs such a task again up to its ``retries`` before it ends ``FAILED`` with
    this error.

    Attributes:
        uid: the task's uid.
        worker: what died, as the backend names it (``"process 4242"``, a Dask worker address),
            or ``None`` when unknown.
        exit_code: the worker's exit status where known; negative for a signal (``-9``: SIGKILL),
            as :mod:`subprocess` reports it.
        retryable: ``False`` when the backend knows a re-run could only fail the same way (its
            engine runs nothing more): the session then ends the task ``FAILED`` at once,
            whatever its ``retries``.
    """

    def __init__(self, uid: str, worker: str | None = None, exit_code: int | None = None,
                 *, retryable: bool = True) -> None:
        self.uid = uid
        self.worker = worker
        self.exit_code = exit_code
        self.retryable = retryable
        who = f"its worker ({worker})" if worker else "its worker"
        if exit_code is None:
            how = "died or was killed"
        elif exit_code < 0:
            how = f"was killed by signal {-exit_code}"
            try:
                how += f" ({signal.Signals(-exit_code).name})"
            except ValueError:
                pass
        else:
            how = f"exited with code {exit_code}"
        super().__init__(f"task {uid}: {who} {how} before the task ended")

    def __reduce__(self) -> tuple[object, ...]:
        if self.retryable:
            return (type(self), (self.uid, self.worker, self.exit_code))
        return (_not_retryable, (type(self), self.uid, self.worker, self.exit_code))


def _not_retryable(cls: type[WorkerLostError], uid: str, worker: str | None,
                   exit_code: int | None) -> WorkerLostError:
    # pickle passes positional arguments only; this restores the keyword one.
    return cls(uid, worker, exit_code, retryable=False)


class BackendUnavailableError(RhapsodyError, RuntimeError):
    """A backend was asked for that is not installed, or cannot run on this machine."""


class SessionClosedError(RhapsodyError, RuntimeError):
    """A task was submitted to, or was still running in, a session that has been closed."""
