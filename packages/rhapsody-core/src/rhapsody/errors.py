"""Exceptions raised by rhapsody itself (a failed function task raises its own exception)."""

from __future__ import annotations


class TaskExecutionError(Exception):
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


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that is not installed, or cannot run on this machine."""


class SessionClosedError(RuntimeError):
    """A task was submitted to, or was still running in, a session that has been closed."""
