"""RHAPSODY's DragonExecutionBackendV3 on a real Dragon runtime: its positional constructor
(num_nodes, pool_nodes, disable_telemetry, name), a workload of functions and executables, and
shutdown()."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from dragon_support import runtime_missing

import rhapsody.backends
from rhapsody import ComputeTask, Session
from rhapsody.testing import workloads
from rhapsody_dragon import DragonBackend

pytestmark = pytest.mark.skipif(bool(runtime_missing()), reason=runtime_missing() or "-")


def old_class(name: str) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls = getattr(rhapsody.backends, name)
    assert len(caught) == 1 and "write rhapsody.get_backend('dragon'" in str(caught[0].message)
    assert issubclass(cls, DragonBackend)
    return cls


def test_dragon_execution_backend_v3_runs_a_rhapsody_workload() -> None:
    cls = old_class("DragonExecutionBackendV3")
    assert cls is old_class("DragonExecutionBackend")  # RHAPSODY 0.5's name for the same class

    async def body() -> None:
        backend = cls(None, None, True, "legacy")  # positional, as RHAPSODY 0.2 took them
        assert backend.name == "legacy"
        async with Session(backends=[backend]) as session:
            tasks = [ComputeTask(function=workloads.square, args=(n,)) for n in range(4)]
            tasks.append(ComputeTask(executable="/bin/echo", arguments=["from dragon"]))
            await session.submit_tasks(tasks)
            await session.wait_tasks(tasks, timeout=120)
            assert [t.return_value for t in tasks[:4]] == [0, 1, 4, 9]
            assert [t.stdout for t in tasks] == ["", "", "", "", "from dragon\n"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await backend.shutdown()  # closed with the session already: returns at once
        assert len(caught) == 1

    asyncio.run(asyncio.wait_for(body(), 300))
