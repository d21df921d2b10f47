"""The private attributes of Dragon's Batch and DDict that rhapsody-dragon uses, each in one place.

``dragon.workflows.batch.Batch`` has no public way to take several results at once from the
results DDict it shares with its own ``Task.get()``, to drop a task it keeps for its task log, or
to say how many physical cores a node has. Each use is here, by name, and
``tests/dragon/test_compat.py`` fails loudly on the dragonhpc release that renames one.
``pyproject.toml`` bounds dragonhpc below the next release not yet tested.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def results_lock(batch: Any) -> Any:
    """The lock Batch's own ``Task.get()`` holds on the results DDict (``batch._results_ddict_lock``).

    The DDict client is shared with Batch; the monitor holds the same lock while it lists and pops
    results, or a ``Task.get()`` on another thread would read from the wrong manager.

    Raises:
        AttributeError: this dragonhpc's Batch has no such lock (the message says so).
    """
    try:
        return batch._results_ddict_lock
    except AttributeError:
        raise AttributeError(_missing("Batch._results_ddict_lock")) from None


def task_log_forgetter(batch: Any) -> Callable[[str, Any], Any]:
    """``pop`` of the dict where Batch keeps every submitted Task for its task log (``_task_log_tasks``).

    Batch drops an entry only in its own ``Task.get()``, which the backend does not call: without
    this, each task's Task object would be kept until the Batch ends. Bind it once; call it as
    ``forget(tuid, None)``. A Batch without the dict keeps nothing to forget (a no-op).
    """
    return getattr(batch, "_task_log_tasks", {}).pop


def physical_cores_per_node(batch: Any, default: int) -> int:
    """The physical cores of one node Batch counts (``batch._physical_cores_per_node``), else ``default``.

    Batch turns a job wider than this into a multi-node job; its topology says only workers per
    pool. A Batch without the attribute is taken to have ``default`` cores per node.
    """
    return int(getattr(batch, "_physical_cores_per_node", default))


def chosen_manager(ddict: Any) -> int | None:
    """The DDict manager a DDict client is aimed at (``ddict._chosen_manager``), None for "by key".

    Batch writes each result to one manager of the results DDict and reads it back aiming the
    client there (its private ``_with_ddict_manager``); DDict's public ``manager(i)`` builds a new
    client each time. Read once per sweep, to put it back after.

    Raises:
        AttributeError: this dragonhpc's DDict has no ``_chosen_manager`` (the message says so).
    """
    try:
        return ddict._chosen_manager
    except AttributeError:
        raise AttributeError(_missing("DDict._chosen_manager")) from None


def manager_chooser(ddict: Any) -> Callable[[int | None], None]:
    """A function that aims ``ddict`` at one manager (writes ``ddict._chosen_manager``).

    Bind it once, outside the loop; hold :func:`results_lock` while it is aimed elsewhere, and put
    back what :func:`chosen_manager` read.
    """
    return functools.partial(setattr, ddict, "_chosen_manager")


def _missing(name: str) -> str:
    from importlib.metadata import version

    return (f"dragonhpc {version('dragonhpc')} has no {name}: "
            "rhapsody_dragon._compat needs updating for this release")
