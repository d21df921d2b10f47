"""The states a task moves through.

A task is ``NEW`` until a session accepts it, ``SUBMITTED`` once a backend holds it, may be reported
``RUNNING`` by backends that know, and ends in exactly one of the terminal states.
"""

from __future__ import annotations

from typing import Final


class TaskState:
    """String constants for task states (``task.state == TaskState.DONE == "DONE"``)."""

    NEW: Final = "NEW"
    SUBMITTED: Final = "SUBMITTED"
    RUNNING: Final = "RUNNING"
    DONE: Final = "DONE"
    FAILED: Final = "FAILED"
    CANCELED: Final = "CANCELED"


TERMINAL_STATES: Final = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELED})
