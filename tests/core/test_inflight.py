"""The shared in-flight table (rhapsody.inflight) and BaseBackend.fail_in_flight, with a real
session and an engine that calls back from its own thread."""

from __future__ import annotations

import asyncio
import pickle
import threading
from collections.abc import Sequence

import pytest

from rhapsody import BaseBackend, ComputeTask, Session, Task, WorkerLostError
from rhapsody.inflight import InFlight


def _task() -> ComputeTask:
    return ComputeTask(function=print)


def test_add_find_pop_by_key_and_by_task() -> None:
    table = InFlight()
    a, b = _task(), _task()
    entry = table.add(a, key="engine-1", handle="future-1")
    table.add(b)  # no engine key of its own: the uid is the key
    assert len(table) == 2 and "engine-1" in table and b["uid"] in table
    assert table.get("engine-1") is entry and table.find(a) is entry and entry.handle == "future-1"
    assert table.pop("engine-1") is entry
    assert table.pop("engine-1") is None and table.find(a) is None  # whoever pops first reports
    assert table.pop_task(b).task is b and len(table) == 0


def test_add_twice_is_refused() -> None:
    table = InFlight()
    task = _task()
    table.add(task, key=1)
    with pytest.raises(ValueError, match="already in flight"):
        table.add(task, key=2)


def test_rekey_files_a_rerun_under_its_new_key() -> None:
    table = InFlight()
    task = _task()
    entry = table.add(task, key="k-0")
    table.rekey(entry, "k-1")
    assert table.get("k-0") is None and table.get("k-1") is entry and table.find(task) is entry
    table.pop("k-1")
    with pytest.raises(KeyError):
        table.rekey(entry, "k-2")


def test_pop_all_where_and_timers_are_stopped() -> None:
    class Timer:
        cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    table = InFlight()
    tasks = [_task() for _ in range(4)]
    timers = []
    for index, task in enumerate(tasks):
        entry = table.add(task, key=index)
        entry.timer = Timer()
        timers.append(entry.timer)
    taken = table.pop_all(lambda entry: entry.key % 2 == 0)
    assert [entry.task for entry in taken] == [tasks[0], tasks[2]]
    assert [timer.cancelled for timer in timers] == [True, False, True, False]
    assert sorted(entry.key for entry in table) == [1, 3]


def test_concurrent_pops_claim_each_entry_once() -> None:
    table = InFlight()
    tasks = [_task() for _ in range(2000)]
    for task in tasks:
        table.add(task)
    claimed: list[list[str]] = [[] for _ in range(4)]

    def claim(mine: list[str]) -> None:
        for task in tasks:
            entry = table.pop(task["uid"])
            if entry is not None:
                mine.append(entry.task["uid"])

    threads = [threading.Thread(target=claim, args=(mine,)) for mine in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everyone = [uid for mine in claimed for uid in mine]
    assert sorted(everyone) == sorted(task["uid"] for task in tasks)  # each exactly once


class EngineGone(BaseBackend):
    """Hands tasks to an 'engine' that never runs them; ``die()`` fails them all from a thread."""

    name = "engine-gone"

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            self.in_flight.add(task, key=("engine", task["uid"]))

    async def cancel_task(self, task: Task) -> bool:
        return self.in_flight.cancel(task) is not None  # reported when the engine answers

    def die(self, *, retryable: bool) -> None:
        def fail() -> None:
            self.fail_in_flight(lambda task: WorkerLostError(task["uid"], "the engine", -9,
                                                             retryable=retryable))
        thread = threading.Thread(target=fail)
        thread.start()
        thread.join()


async def test_fail_in_flight_from_an_engine_thread_ends_every_task_at_once() -> None:
    backend = EngineGone()
    async with Session(backends=[backend]) as session:
        tasks = [ComputeTask(function=print, retries=0) for _ in range(5)]
        await session.submit_tasks(tasks)
        await session.cancel_task(tasks[0], grace=0)
        backend.die(retryable=True)
        done = await session.wait_tasks(tasks, timeout=10)
        assert [task.state for task in done] == ["CANCELED"] + ["FAILED"] * 4
        assert all(isinstance(task.exception, WorkerLostError) for task in done[1:])
        assert len(backend.in_flight) == 0


async def test_a_not_retryable_loss_is_final_whatever_the_retries() -> None:
    backend = EngineGone()
    async with Session(backends=[backend]) as session:
        task = ComputeTask(function=print, retries=3)
        await session.submit_tasks([task])
        backend.die(retryable=False)
        await session.wait_tasks([task], timeout=10)
        assert task.state == "FAILED" and task.retried == 0 and task.retries == 3
        assert task.exception.retryable is False


async def test_a_retryable_loss_is_run_again() -> None:
    backend = EngineGone()
    async with Session(backends=[backend]) as session:
        task = ComputeTask(function=print, retries=2)
        await session.submit_tasks([task])
        for _ in range(3):
            while not backend.in_flight:
                await asyncio.sleep(0.01)
            backend.die(retryable=True)
        await session.wait_tasks([task], timeout=10)
        assert task.state == "FAILED" and task.retried == 2


def test_worker_lost_error_pickles_with_its_retry_verdict() -> None:
    for retryable in (True, False):
        error = pickle.loads(pickle.dumps(WorkerLostError("t.1", "w", -9, retryable=retryable)))
        assert error.retryable is retryable and error.exit_code == -9 and "SIGKILL" in str(error)


class RefusesReruns(EngineGone):
    name = "refuses-reruns"
    submits = 0

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        self.submits += 1
        if self.submits > 1:
            raise RuntimeError("the engine takes no more work")
        await super().submit_tasks(tasks)


async def test_a_rerun_the_backend_refuses_is_final_even_when_every_exception_is_retried() -> None:
    backend = RefusesReruns()
    async with Session(backends=[backend]) as session:
        task = ComputeTask(function=print, retries=3, retry_exceptions=True)
        await session.submit_tasks([task])
        backend.die(retryable=True)
        await session.wait_tasks([task], timeout=10)
        assert task.state == "FAILED" and task.retried == 1 and backend.submits == 2
        assert "running it again (retry 1 of 3) failed" in str(task.exception)
        assert task.retries == 3  # the task's own setting is left as the user wrote it
        assert not session._final  # nothing kept once the failure was applied
