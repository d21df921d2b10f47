"""The ``noop`` backend: ends every task at once without running it.

It measures rhapsody's own overhead (task creation, submission, state hand-over, futures) and
lets workflows be dry-run: every task ends ``DONE`` with ``return_value`` ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..backend import BaseBackend
from ..hookspecs import hookimpl
from ..states import TaskState
from ..task import Task


class NoopBackend(BaseBackend):
    """Completes every task as soon as it is submitted."""

    name = "noop"
    task_kinds = frozenset({"function", "executable", "ai"})

    def __init__(self, *, name: str | None = None) -> None:
        """``name``: this instance's name in a session (default ``"noop"``)."""
        super().__init__(name=name)

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        self.report_all(tasks, TaskState.DONE)

    async def cancel_task(self, task: Task) -> bool:
        return False


@hookimpl
def rhapsody_register_backends() -> list[type[BaseBackend]]:
    return [NoopBackend]
