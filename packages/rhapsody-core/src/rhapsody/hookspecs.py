# mypy: disable-error-code="empty-body"
"""The plugin contract: every hook a rhapsody plugin may implement.

A plugin is a module (or object) whose functions are decorated with :data:`rhapsody.hookimpl` and
whose names match a hook below. Plugins are found through the ``rhapsody`` entry-point group::

    [project.entry-points.rhapsody]
    mysite = "rhapsody_mysite.plugin"

The built-in backends are registered through these same hooks. A function decorated with
``hookimpl`` whose name matches no hook here is an error at load time, so a misspelt hook never
goes silently unused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .backend import BaseBackend
    from .task import Task

hookspec = pluggy.HookspecMarker("rhapsody")
hookimpl = pluggy.HookimplMarker("rhapsody")


@hookspec
def rhapsody_register_backends() -> Iterable[type[BaseBackend]]:
    """Return the backend classes this plugin provides.

    Each class subclasses :class:`rhapsody.BaseBackend` and has a class attribute ``name`` that is
    unique among all installed backends; that name is what users pass to
    ``rhapsody.get_backend(name)``, ``Session(backends=[name])`` and ``rhapsody run --backend``.
    Importing the engine a backend drives must not happen here: do it when the backend is
    initialised, and say in ``check_available()`` why the engine cannot run.
    """


@hookspec
def rhapsody_validate_task(task: Task, backend: BaseBackend) -> None:
    """Check a task before a session hands it to ``backend``; raise to reject it.

    Called once per task in ``Session.submit_tasks``, before any task of that call is submitted.
    The exception raised (a ``ValueError`` or ``TypeError`` with a message that says what is wrong
    is best) propagates out of ``submit_tasks`` and no task of the call is submitted. Use it for
    site policy (allowed executables, quotas) or workflow-specific checks.
    """


@hookspec
def rhapsody_task_states_changed(tasks: Sequence[Task]) -> None:
    """Be told, in batches, that tasks have changed state.

    Called on the session's event-loop thread, once per hand-over: once for the tasks of each
    ``submit_tasks`` call per backend they go to (state ``SUBMITTED``, always before any later
    state of those tasks) and once for each batch of updates a backend reports (``RUNNING``,
    ``DONE``, ``FAILED``, ``CANCELED``; reports that change nothing are left out). Read the new state from
    ``task.state``. Implementations must be fast and must not block: they run on the hot path.
    Progress bars, telemetry and journals are built on this hook.
    """
