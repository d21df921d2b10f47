"""The private parts of RADICAL-Pilot that rhapsody_radical._compat uses still exist in the installed
radical.pilot: a release that changes one fails here, by name and with the installed version,
instead of every option being refused or a Raptor worker whose calls never end.

The descriptions are built for real; a Raptor worker needs a running pilot, so its private methods
and result queue are checked on the class (its source, where the queue is set in the constructor).
"""

from __future__ import annotations

import inspect
import re
from importlib.metadata import version

import pytest

from rhapsody_radical import _compat

rp = pytest.importorskip("radical.pilot", reason="radical.pilot is not installed")

INSTALLED = f"radical.pilot {version('radical.pilot')}"


def test_task_description_schema() -> None:
    description = rp.TaskDescription()
    assert isinstance(getattr(description, "_schema", None), dict), \
        f"{INSTALLED}: TaskDescription has no _schema dict (rhapsody_radical._compat)"
    fields = _compat.task_description_fields(rp)
    assert set(fields) == set(description._schema)
    # The fields the backend itself sets must be among them.
    for field in ("uid", "name", "mode", "executable", "arguments", "function", "args", "kwargs",
                  "ranks", "cores_per_rank", "gpus_per_rank", "environment", "sandbox"):
        assert field in fields, f"{INSTALLED}: TaskDescription._schema has no {field!r}"


def test_pilot_description_schema() -> None:
    description = rp.PilotDescription()
    assert isinstance(getattr(description, "_schema", None), dict), \
        f"{INSTALLED}: PilotDescription has no _schema dict (rhapsody_radical._compat)"
    fields = _compat.pilot_description_fields(rp)
    assert set(fields) == set(description._schema)
    for field in ("resource", "runtime", "exit_on_error", "queue", "project", "access_schema"):
        assert field in fields, f"{INSTALLED}: PilotDescription._schema has no {field!r}"


def test_missing_schema_is_named() -> None:
    class NoSchema:
        TaskDescription = object

    with pytest.raises(AttributeError, match=r"radical\.pilot .* has no TaskDescription\._schema"):
        _compat.task_description_fields(NoSchema)


@pytest.mark.parametrize(("method", "parameters"), sorted(_compat.WORKER_OVERRIDES.items()))
def test_default_worker_private_methods(method: str, parameters: tuple[str, ...]) -> None:
    found = inspect.getattr_static(rp.raptor.DefaultWorker, method, None)
    assert inspect.isfunction(found), \
        f"{INSTALLED}: raptor.DefaultWorker has no method {method} (RhapsodyWorker overrides it)"
    names = tuple(inspect.signature(found).parameters)[1:]
    assert names == parameters, \
        f"{INSTALLED}: raptor.DefaultWorker.{method} takes {names}, RhapsodyWorker expects {parameters}"


def test_default_worker_result_queue() -> None:
    try:
        source = inspect.getsource(rp.raptor.DefaultWorker)
    except (OSError, TypeError) as exc:
        pytest.skip(f"{INSTALLED}: the source of raptor.DefaultWorker is not available ({exc})")
    assert re.search(r"self\._result_queue\s*=\s*mp\.Queue\(\)", source), \
        f"{INSTALLED}: raptor.DefaultWorker no longer sets self._result_queue (rhapsody_radical._compat)"
    assert re.search(r"self\._result_queue\.get\(", source), \
        f"{INSTALLED}: raptor.DefaultWorker no longer reads results from _result_queue"

    class Worker:
        _result_queue = object()

    assert _compat.worker_result_queue(Worker()) is Worker._result_queue
    with pytest.raises(AttributeError, match=r"radical\.pilot .* has no raptor\.DefaultWorker\._result_queue"):
        _compat.worker_result_queue(object())
