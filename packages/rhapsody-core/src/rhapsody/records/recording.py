"""What ``Session(records=[...])`` does with its recorders: hear only that session's tasks.

Plugins registered with :func:`rhapsody.register_plugin` hear every session of the process.
Recorders given to a session are registered on a plugin manager of the session's own, with the
same hook specifications (a misspelt hook is refused as it is there), next to a
:class:`~rhapsody.records.timeline.Timeline` that stamps ``task.timings`` first. The session
calls them before the process-wide plugins, so those read the stamps too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pluggy

from .. import hookspecs
from ..task import Task
from .journal import Journal
from .timeline import Timeline

Notify = Callable[..., Any]


class RecordSet:
    """A session's recorders, the journal among them (at most one), and their life cycle.

    Raises:
        TypeError: an item has no ``rhapsody_task_states_changed``.
        ValueError: two journals.
        pluggy.PluginValidationError: an item implements a hook that does not exist, or one with
            the wrong arguments.
    """

    def __init__(self, recorders: Iterable[Any]) -> None:
        self.recorders = list(recorders)
        manager = pluggy.PluginManager("rhapsody")
        manager.add_hookspecs(hookspecs)
        if not any(isinstance(recorder, Timeline) for recorder in self.recorders):
            # Given one (records=[Timeline()]: timings and nothing else), it is that one.
            manager.register(Timeline(), name="rhapsody.records.timeline")
        for index, recorder in enumerate(self.recorders):
            # The session calls its recorders' rhapsody_task_states_changed only: an object
            # without one (or with only other hooks) would never hear anything.
            if not callable(getattr(recorder, "rhapsody_task_states_changed", None)):
                raise TypeError(f"records: {recorder!r} has no rhapsody_task_states_changed "
                                "(a method decorated with rhapsody.hookimpl)")
            manager.register(recorder, name=f"records.{index}.{type(recorder).__name__}")
        manager.check_pending()
        journals = [recorder for recorder in self.recorders if isinstance(recorder, Journal)]
        if len(journals) > 1:
            raise ValueError("records: a session takes at most one Journal")
        self.journal: Journal | None = journals[0] if journals else None
        self._hook = manager.hook.rhapsody_task_states_changed

    def open(self) -> None:
        """Open every recorder that has ``open()``; on failure close those opened, then raise."""
        opened = []
        try:
            for recorder in self.recorders:
                start = getattr(recorder, "open", None)
                if start is not None:
                    start()
                opened.append(recorder)
        except BaseException:
            for recorder in opened:
                _close(recorder)
            raise

    def close(self) -> None:
        """Close every recorder that has ``close()``; re-raise the first failure after all."""
        error: BaseException | None = None
        for recorder in self.recorders:
            try:
                _close(recorder)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def notifier(self, outer: Notify | None) -> Notify:
        """The session's ``rhapsody_task_states_changed`` caller: its recorders, then ``outer``
        (the process-wide plugins' hook, ``None`` when none implements it)."""
        inner = self._hook
        if outer is None:
            return inner  # type: ignore[no-any-return]

        def notify(*, tasks: Sequence[Task]) -> None:
            inner(tasks=tasks)
            outer(tasks=tasks)

        return notify

    def recorded(self, groups: Iterable[list[Task]]) -> list[tuple[Task, dict[str, Any]]]:
        """Take the tasks the journal can restore out of ``groups`` (lists changed in place);
        return them with the result fields to give them. Nothing when there is no journal."""
        journal = self.journal
        found: list[tuple[Task, dict[str, Any]]] = []
        if journal is None:
            return found
        lookup = journal.lookup
        for group in groups:
            keep = []
            for task in group:
                record = lookup(task)
                if record is None:
                    keep.append(task)
                else:
                    found.append((task, record))
            if len(keep) != len(group):
                group[:] = keep
        return found


def _close(recorder: Any) -> None:
    stop = getattr(recorder, "close", None)
    if stop is not None:
        stop()
