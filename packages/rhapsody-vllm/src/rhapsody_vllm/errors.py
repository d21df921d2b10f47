"""Exceptions put on failed AITasks (``task.exception``, raised by the task's future)."""

from __future__ import annotations

from rhapsody.errors import RhapsodyError


class InferenceError(RhapsodyError, RuntimeError):
    """An inference request failed: the server answered with an error, or could not be reached.

    Attributes:
        uid: the task's uid.
        endpoint: the base URL the request went to (``http://host:port/v1``).
        status: the HTTP status the server answered with, or ``None`` when there was no answer.
        detail: the server's own error message (or the transport error's).
    """

    def __init__(self, uid: str, endpoint: str, status: int | None, detail: str) -> None:
        self.uid = uid
        self.endpoint = endpoint
        self.status = status
        self.detail = detail
        answer = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"task {uid}: {endpoint} failed ({answer}): {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.uid, self.endpoint, self.status, self.detail))


class EngineDiedError(InferenceError):
    """The vLLM server this backend started exited while the task was in flight (or before it).

    ``detail`` carries the exit status and the last lines of the server's log.
    """

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.uid, self.endpoint, self.status, self.detail))
