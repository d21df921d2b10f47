"""The private attributes of Dragon that rhapsody_dragon._compat uses still exist in the installed
dragonhpc: a release that renames one fails here, by name and with the installed version, instead of
results read from the wrong manager, a lock not shared with Batch, or Task objects kept forever.

A Batch or DDict instance needs a Dragon runtime, and these attributes are set in their
constructors, so the tests read the classes' source; with a runtime, tests/dragon/test_dragon.py
runs the backend on them. The functions' own behaviour is checked on stand-in objects.
"""

from __future__ import annotations

import inspect
import re
import threading
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

import pytest

from rhapsody_dragon import _compat

batch_module = pytest.importorskip("dragon.workflows.batch.batch", reason="dragonhpc[batch] is not installed")
ddict_module = pytest.importorskip("dragon.data.ddict", reason="dragonhpc is not installed")

INSTALLED = f"dragonhpc {version('dragonhpc')}"


def _source(cls: Any) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError) as exc:  # a build without its .py sources
        pytest.skip(f"{INSTALLED}: the source of {cls.__qualname__} is not available ({exc})")


def _assigned(cls: Any, attribute: str, value: str = r".+") -> None:
    """``cls`` sets ``self.<attribute>`` (to something matching ``value``) somewhere in its methods."""
    pattern = rf"self\.{re.escape(attribute)}\s*=\s*{value}"
    assert re.search(pattern, _source(cls)), (
        f"{INSTALLED}: {cls.__qualname__} no longer sets self.{attribute} "
        f"(rhapsody_dragon._compat uses it; update it for this release)"
    )


def test_batch_results_ddict_lock() -> None:
    _assigned(batch_module.Batch, "_results_ddict_lock", r"threading\.(R)?Lock\(\)")
    # Batch's own Task.get() holds the same lock: that is what the monitor shares it with.
    assert "_batch._results_ddict_lock" in _source(batch_module.Task), \
        f"{INSTALLED}: Task.get() no longer holds Batch._results_ddict_lock (rhapsody_dragon._compat)"
    lock = threading.Lock()
    assert _compat.results_lock(SimpleNamespace(_results_ddict_lock=lock)) is lock
    with pytest.raises(AttributeError, match=r"dragonhpc .* has no Batch\._results_ddict_lock"):
        _compat.results_lock(object())


def test_batch_task_log_tasks() -> None:
    _assigned(batch_module.Batch, "_task_log_tasks", r"\{\}")
    kept = {"t1": object()}
    forget = _compat.task_log_forgetter(SimpleNamespace(_task_log_tasks=kept))
    forget("t1", None)
    forget("t2", None)
    assert kept == {}
    _compat.task_log_forgetter(object())("t1", None)  # no task log: nothing to forget


def test_batch_physical_cores_per_node() -> None:
    _assigned(batch_module.Batch, "_physical_cores_per_node")
    assert _compat.physical_cores_per_node(SimpleNamespace(_physical_cores_per_node=64), 8) == 64
    assert _compat.physical_cores_per_node(object(), 8) == 8


def test_ddict_chosen_manager() -> None:
    _assigned(ddict_module.DDict, "_chosen_manager", "None")
    # DDict routes a key to the chosen manager when one is set, as Batch's own reads rely on.
    assert re.search(r"if self\._chosen_manager is not None", _source(ddict_module.DDict)), \
        f"{INSTALLED}: DDict no longer routes by _chosen_manager (rhapsody_dragon._compat)"
    ddict = SimpleNamespace(_chosen_manager=None)
    choose = _compat.manager_chooser(ddict)
    choose(3)
    assert _compat.chosen_manager(ddict) == 3
    choose(None)
    assert _compat.chosen_manager(ddict) is None
    with pytest.raises(AttributeError, match=r"dragonhpc .* has no DDict\._chosen_manager"):
        _compat.chosen_manager(object())
