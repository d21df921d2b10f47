"""RHAPSODY's RadicalExecutionBackend on a real local.localhost pilot: its resources dict is the
pilot description, its old instance name routes tasks, raptor_config is refused."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import pytest

import rhapsody.backends
from rhapsody import ComputeTask, Session
from rhapsody_radical import RadicalBackend

rp = pytest.importorskip("radical.pilot")


def old_class() -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls = rhapsody.backends.RadicalExecutionBackend
    assert len(caught) == 1 and "write rhapsody.get_backend('radical'" in str(caught[0].message)
    assert issubclass(cls, RadicalBackend) and cls.__name__ == "RadicalExecutionBackend"
    return cls


def test_raptor_config_is_refused_saying_what_to_use() -> None:
    with pytest.raises(ValueError, match=r"raptor_workers=n, raptor_cores_per_worker=c"):
        old_class()({"resource": "local.localhost"}, {"masters": [{}]})


def test_the_resources_dict_starts_the_pilot_as_before(tmp_path: Path) -> None:
    cls = old_class()

    async def body() -> None:
        # RHAPSODY's own default description, exit_on_error included; our options by keyword.
        backend = cls({"resource": "local.localhost", "runtime": 10, "exit_on_error": True,
                       "cores": 1}, session_dir=str(tmp_path), cleanup=True, raptor_workers=0)
        assert backend.name == "radical_pilot"
        async with Session([backend]) as session:
            assert backend.pilot.description["cores"] == 1
            assert backend.pilot.description["exit_on_error"] is False  # failures fail tasks
            task = ComputeTask(executable="/bin/echo", arguments=["from the pilot"],
                               backend="radical_pilot")
            await session.submit_tasks([task])
            await session.wait_tasks([task], timeout=300)
            assert (task.state, task.stdout) == ("DONE", "from the pilot\n")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await backend.shutdown()  # closed with the session already: returns at once
        assert len(caught) == 1

    asyncio.run(asyncio.wait_for(body(), 400))
