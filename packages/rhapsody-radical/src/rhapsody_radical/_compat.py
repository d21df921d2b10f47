"""The private parts of RADICAL-Pilot that rhapsody-radical uses, each in one place.

RP's descriptions (``radical.utils.TypedDict``) have no public list of the fields they accept, and
Raptor's ``DefaultWorker`` has no public hooks for what ``raptor_worker.RhapsodyWorker`` changes. Each
use is here, by name, and ``tests/radical/test_compat.py`` fails loudly on the RP release that
changes one. ``pyproject.toml`` bounds radical.pilot below the next release not yet tested.

``RhapsodyWorker`` also overrides two private methods of ``rp.raptor.DefaultWorker`` (a subclass
cannot route an override through a function): ``_request_cb(self, tasks)``, which receives the
requests, and ``_dispatch(self, task, env)``, the process forked for each call. They are listed in
:data:`WORKER_OVERRIDES` and checked by the same tests.
"""

from __future__ import annotations

from typing import Any

#: Private methods of ``rp.raptor.DefaultWorker`` that ``RhapsodyWorker`` overrides, with the
#: parameters (after ``self``) it relies on.
WORKER_OVERRIDES: dict[str, tuple[str, ...]] = {
    "_request_cb": ("tasks",),
    "_dispatch": ("task", "env"),
}


def task_description_fields(rp: Any) -> frozenset[str]:
    """The fields ``rp.TaskDescription`` accepts (the keys of its ``_schema``).

    Used to refuse, naming the valid ones, a backend-specific option RP does not know.

    Raises:
        AttributeError: this RP's TaskDescription has no ``_schema`` (the message says so).
    """
    return frozenset(_schema(rp, "TaskDescription"))


def pilot_description_fields(rp: Any) -> frozenset[str]:
    """The fields ``rp.PilotDescription`` accepts (the keys of its ``_schema``).

    Raises:
        AttributeError: this RP's PilotDescription has no ``_schema`` (the message says so).
    """
    return frozenset(_schema(rp, "PilotDescription"))


def worker_result_queue(worker: Any) -> Any:
    """The queue ``DefaultWorker`` reads each call's result from (``worker._result_queue``).

    Its result watcher thread takes ``[task, out, err, exit_code, value, exception]`` from it;
    the dispatch process puts exactly one such list per call there.

    Raises:
        AttributeError: this RP's DefaultWorker has no ``_result_queue`` (the message says so).
    """
    try:
        return worker._result_queue
    except AttributeError:
        raise AttributeError(_missing("raptor.DefaultWorker._result_queue")) from None


def _schema(rp: Any, description: str) -> Any:
    schema = getattr(getattr(rp, description), "_schema", None)
    if schema is None:
        raise AttributeError(_missing(f"{description}._schema"))
    return schema


def _missing(name: str) -> str:
    from importlib.metadata import version

    return (f"radical.pilot {version('radical.pilot')} has no {name}: "
            "rhapsody_radical._compat needs updating for this release")
