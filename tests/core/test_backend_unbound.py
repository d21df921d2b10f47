"""A backend never given to a session refuses submit_tasks at once and runs nothing (otherwise
it would run the tasks and then fail to report them to nobody)."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Sequence

import pytest

import rhapsody
from rhapsody import BaseBackend, ComputeTask, Session
from rhapsody.task import Task

UNBOUND = (r"^backend '{}' is not attached to a session: give it to Session\(backends=\[\.\.\.\]\) "
           r"and submit through the session$")


def touch(path: str) -> None:
    pathlib.Path(path).touch()


async def test_concurrent_backend_runs_no_function_before_a_session_binds_it(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"
    backend = rhapsody.get_backend("concurrent")
    task = ComputeTask(function=touch, args=(str(marker),))
    with pytest.raises(RuntimeError, match=UNBOUND.format("concurrent")):
        await backend.submit_tasks([task])
    await asyncio.sleep(0.5)  # long enough for a thread-pool task that had been handed over
    assert not marker.exists()
    assert task.state == "NEW"
    # The refusal leaves the backend usable: given to a session, the same task runs.
    async with Session(backends=[backend]) as session:
        await session.submit_tasks([task])
        await session.wait_tasks([task])
    assert task.state == "DONE" and marker.exists()


async def test_noop_backend_refuses_before_a_session_binds_it() -> None:
    backend = rhapsody.get_backend("noop")
    task = ComputeTask(function=abs, args=(-1,))
    with pytest.raises(RuntimeError, match=UNBOUND.format("noop")):
        await backend.submit_tasks([task])
    assert task.state == "NEW"


async def test_a_third_party_backend_is_covered_without_its_cooperation() -> None:
    calls: list[int] = []

    class ThirdParty(BaseBackend):
        name = "third-party"

        def __init__(self) -> None:
            super().__init__()

        async def submit_tasks(self, tasks: Sequence[Task]) -> None:
            calls.append(len(tasks))
            self.report_all(tasks, "DONE")

        async def cancel_task(self, task: Task) -> bool:
            return False

    class Derived(ThirdParty):
        async def submit_tasks(self, tasks: Sequence[Task]) -> None:
            calls.append(-1)
            await super().submit_tasks(tasks)

    for cls in (ThirdParty, Derived):
        with pytest.raises(RuntimeError, match=UNBOUND.format("third-party")):
            await cls().submit_tasks([ComputeTask(function=abs, args=(-1,))])
    assert calls == []
    assert ThirdParty.submit_tasks.__name__ == "submit_tasks"
    task = ComputeTask(function=abs, args=(-1,))
    async with Session(backends=[Derived()]) as session:
        await session.submit_tasks([task])
        await session.wait_tasks([task])
    assert task.state == "DONE" and calls == [-1, 1]
