"""Small real backends used by the core's tests: they run tasks on their own threads.

They exist to exercise what the built-in backends never do: reporting from foreign threads, many
single-task reports in a burst, a shutdown that hangs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from rhapsody import BaseBackend, Task
from rhapsody.backend import Receiver


class ThreadedBackend(BaseBackend):
    """Runs each submitted batch of function tasks on a new thread and reports the batch at once.

    ``per_task_reports=True`` reports every task in its own ``report()`` call instead, and
    ``release`` (a threading.Event) holds the thread until it is set.
    """

    name = "threaded"
    task_kinds = frozenset({"function"})

    def __init__(self, *, per_task_reports: bool = False, release: threading.Event | None = None) -> None:
        super().__init__()
        self.per_task_reports = per_task_reports
        self.release = release
        self.threads: list[threading.Thread] = []
        self.receiver_calls = 0
        self.reported = threading.Event()

    def bind(self, receiver: Receiver, loop: asyncio.AbstractEventLoop) -> None:
        def counting(items: Any, state: str | None) -> None:
            self.receiver_calls += 1
            receiver(items, state)

        super().bind(counting, loop)

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        batch = list(tasks)
        thread = threading.Thread(target=self._run, args=(batch,), daemon=True)
        self.threads.append(thread)
        thread.start()

    def _run(self, batch: list[Task]) -> None:
        if self.release is not None:
            self.release.wait(60)
        updates = []
        for task in batch:
            try:
                task["return_value"] = task["function"](*task["args"], **task["kwargs"])
                update = (task, "DONE")
            except Exception as exc:
                task["exception"] = exc
                update = (task, "FAILED")
            if self.per_task_reports:
                self.report([update])
            else:
                updates.append(update)
        if updates:
            self.report(updates)
        self.reported.set()

    async def cancel_task(self, task: Task) -> bool:
        return False

    async def _shutdown(self) -> None:
        if self.release is not None:
            self.release.set()
        for thread in self.threads:
            thread.join(10)


class StuckBackend(BaseBackend):
    """Accepts tasks and never ends them; its shutdown never returns unless ``hang=False``."""

    name = "stuck"
    task_kinds = frozenset({"function", "executable", "ai"})

    def __init__(self, *, hang: bool = True) -> None:
        super().__init__()
        self.hang = hang
        self.shutdown_started = False

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        return None

    async def cancel_task(self, task: Task) -> bool:
        return False

    async def _shutdown(self) -> None:
        self.shutdown_started = True
        if self.hang:
            await asyncio.Event().wait()


class FailingShutdownBackend(StuckBackend):
    """Its shutdown raises."""

    name = "failing-shutdown"

    async def _shutdown(self) -> None:
        self.shutdown_started = True
        raise OSError("engine refused to stop")


class RecordingBackend(StuckBackend):
    """Records its initialisation and shutdown; ``fail_init`` makes initialisation raise."""

    name = "recording"

    def __init__(self, *, fail_init: bool = False, name: str = "recording") -> None:
        super().__init__(hang=False)
        self.name = name  # type: ignore[misc]
        self.fail_init = fail_init
        self.events: list[str] = []

    async def _initialize(self) -> None:
        if self.fail_init:
            raise ConnectionError("scheduler unreachable")
        self.events.append("initialized")

    async def _shutdown(self) -> None:
        self.events.append("shut down")
