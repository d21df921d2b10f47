"""A live progress bar for a session's tasks, in a terminal or a Jupyter notebook.

``Session(records=[LiveProgress()])`` shows the bar ``rhapsody run`` shows (tasks ended of tasks
submitted, percentage, elapsed time) while the session runs. It draws through rich, which
updates the bar in place in a terminal and, in Jupyter (where rich's console detects the
notebook), in an output widget of the cell: that needs ``ipywidgets`` installed in the kernel
(rich warns when it is missing). Elsewhere (a file, a pipe) the bar is printed once, at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..hookspecs import hookimpl
from ..states import TERMINAL_STATES, TaskState
from ..task import Task


class LiveProgress:
    """Counts submitted and ended tasks into a rich progress bar.

    Args:
        console: the ``rich.console.Console`` to draw on; a new one (stdout, terminal or
            notebook as detected) when omitted.
        description: the bar's label.
    """

    def __init__(self, *, console: Any = None, description: str = "tasks") -> None:
        self.console = console
        self.description = description
        self.submitted = 0
        self.ended = 0
        self._progress: Any = None
        self._bar: Any = None

    def open(self) -> None:
        """Show the bar."""
        if self._progress is not None:
            return
        from rich.console import Console

        from ..cli.report import make_progress  # the command line's bar, in one place

        self._progress = make_progress(self.console if self.console is not None else Console())
        self._bar = self._progress.add_task(self.description, total=None)
        self._progress.start()

    def close(self) -> None:
        """Draw the final state and stop updating. Idempotent."""
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.update(self._bar, total=self.submitted, completed=self.ended)
            progress.stop()

    @hookimpl
    def rhapsody_task_states_changed(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            state = task["state"]
            if state == TaskState.SUBMITTED:
                self.submitted += 1
            elif state in TERMINAL_STATES:
                self.ended += 1
        if self._progress is not None:
            self._progress.update(self._bar, total=self.submitted, completed=self.ended)
