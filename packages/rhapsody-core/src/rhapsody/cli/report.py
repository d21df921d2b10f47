"""Live progress and the end-of-run summary, fed by the ``rhapsody_task_states_changed`` hook."""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..hookspecs import hookimpl
from ..records.timeline import failure_text, task_label
from ..states import TERMINAL_STATES
from ..task import Task

_SLOWEST = 5
_FAILURES_SHOWN = 10


@dataclass
class Failure:
    uid: str
    exit_code: int | None
    detail: str


@dataclass
class RunReport:
    """Counts what the session reports; keeps per-task data only while a task runs."""

    progress: Progress | None = None
    submitted: int = 0
    states: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    failure_count: int = 0
    restored: int = 0  # ended DONE from a journal's record, without running
    started: float = field(default_factory=time.monotonic)
    _progress_id: TaskID | None = None
    _submit_times: dict[str, float] = field(default_factory=dict)
    _slowest: list[tuple[float, str]] = field(default_factory=list)

    @hookimpl
    def rhapsody_task_states_changed(self, tasks: Sequence[Task]) -> None:
        now = time.monotonic()
        ended = 0
        for task in tasks:
            state = task["state"]
            uid = task["uid"]
            if state == "SUBMITTED":
                self.submitted += 1
                self._submit_times[uid] = now
            elif state in TERMINAL_STATES:
                ended += 1
                self.states[state] += 1
                if task.get("restored"):
                    self.restored += 1
                began = self._submit_times.pop(uid, now)
                entry = (now - began, task_label(task))
                if len(self._slowest) < _SLOWEST:
                    heapq.heappush(self._slowest, entry)
                else:
                    heapq.heappushpop(self._slowest, entry)
                if state == "FAILED":
                    self._record_failure(task)
        if self.progress is not None:
            if self._progress_id is None:
                self._progress_id = self.progress.add_task("tasks", total=None)
            self.progress.update(self._progress_id, total=self.submitted, advance=ended)

    def _record_failure(self, task: Task) -> None:
        self.failure_count += 1
        if len(self.failures) >= _FAILURES_SHOWN:
            return
        self.failures.append(Failure(task_label(task), task.get("exit_code"), failure_text(task, 500)))

    @property
    def ended(self) -> int:
        return sum(self.states.values())

    @property
    def ok(self) -> bool:
        return self.states["FAILED"] == 0 and self.states["CANCELED"] == 0

    def render(self, console: Console) -> None:
        wall = time.monotonic() - self.started
        counts = Table(title="rhapsody run summary", show_header=True)
        for state in ("DONE", "FAILED", "CANCELED"):
            counts.add_column(state, justify="right")
        if self.restored:
            counts.add_column("restored", justify="right")
        counts.add_column("wall time", justify="right")
        counts.add_column("throughput", justify="right")
        rate = self.ended / wall if wall > 0 else 0.0
        counts.add_row(*(str(self.states[s]) for s in ("DONE", "FAILED", "CANCELED")),
                       *([str(self.restored)] if self.restored else []),
                       f"{wall:.2f} s", f"{rate:.1f} tasks/s")
        console.print(counts)
        if self._slowest:
            slow = Table(title=f"slowest {len(self._slowest)} tasks")
            slow.add_column("task")
            slow.add_column("seconds from submit to end", justify="right")
            for seconds, uid in sorted(self._slowest, reverse=True):
                slow.add_row(uid, f"{seconds:.3f}")
            console.print(slow)
        if self.failures:
            failed = Table(title=f"failures ({self.failure_count}; first {len(self.failures)} shown)")
            failed.add_column("task")
            failed.add_column("exit", justify="right")
            failed.add_column("stderr / exception")
            for failure in self.failures:
                failed.add_row(failure.uid, "" if failure.exit_code is None else str(failure.exit_code),
                               failure.detail)
            console.print(failed)


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
