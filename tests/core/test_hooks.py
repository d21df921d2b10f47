"""The hooks a session calls: rhapsody_validate_task and rhapsody_task_states_changed.

Plugins are registered with rhapsody.register_plugin before the session is made (a session looks
its hooks up once, when it is created) and unregistered after each test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from backends_for_tests import StuckBackend, ThreadedBackend

import rhapsody
from rhapsody import ComputeTask, Session, hookimpl
from rhapsody.testing import workloads

NO_HANG = 60.0


class SitePolicy:
    """Refuses executables outside /bin/ and records what it was asked about."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @hookimpl
    def rhapsody_validate_task(self, task: Any, backend: Any) -> None:
        self.seen.append((task.uid, backend.name))
        if task.kind == "executable" and not task.executable.startswith("/bin/"):
            raise ValueError(f"site policy: {task.executable} is not an allowed program")


class Journal:
    """Records every batch of state changes: its size and the states it carried."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[int] = set()

    @hookimpl
    def rhapsody_task_states_changed(self, tasks: Any) -> None:
        self.threads.add(threading.get_ident())
        self.batches.append([task.state for task in tasks])


@pytest.fixture
def policy() -> Iterator[SitePolicy]:
    plugin = SitePolicy()
    rhapsody.register_plugin(plugin, name="test-site-policy")
    yield plugin
    rhapsody.unregister_plugin(plugin)


@pytest.fixture
def journal() -> Iterator[Journal]:
    plugin = Journal()
    rhapsody.register_plugin(plugin, name="test-journal")
    yield plugin
    rhapsody.unregister_plugin(plugin)


# -- rhapsody_validate_task ------------------------------------------------------------------


async def test_validate_task_rejects_and_nothing_is_submitted(policy: SitePolicy) -> None:
    async with Session() as session:
        allowed = ComputeTask(executable="/bin/echo", arguments=["ok"])
        function = ComputeTask(function=workloads.add, args=(1, 2))
        refused = ComputeTask(executable="/usr/bin/rm", arguments=["-rf", "/tmp/x"])
        with pytest.raises(ValueError, match=r"^site policy: /usr/bin/rm is not an allowed program$"):
            await session.submit_tasks([allowed, function, refused])
        assert policy.seen == [(allowed.uid, "concurrent"), (function.uid, "concurrent"),
                               (refused.uid, "concurrent")]
        for task in (allowed, function, refused):
            assert (task.state, task.future) == ("NEW", None)
        assert session.in_flight == 0
        # the session keeps working, and the accepted tasks can be submitted again
        await session.submit_tasks([allowed, function])
        await session.wait_tasks([allowed, function], timeout=NO_HANG)
        assert (allowed.stdout, function.return_value) == ("ok\n", 3)


async def test_validate_task_is_told_the_routed_backend(policy: SitePolicy) -> None:
    async with Session(backends=["noop", "concurrent"]) as session:
        a = ComputeTask(function=workloads.add)
        b = ComputeTask(function=workloads.add, backend="concurrent")
        await session.submit_tasks([a, b])
        await session.wait_tasks([a, b], timeout=NO_HANG)
    assert policy.seen == [(a.uid, "noop"), (b.uid, "concurrent")]


async def test_without_the_plugin_nothing_is_validated() -> None:
    async with Session() as session:
        task = ComputeTask(executable="/usr/bin/env")
        await session.submit_tasks([task])
        await session.wait_tasks([task], timeout=NO_HANG)
        assert task.state == "DONE"


# -- rhapsody_task_states_changed ------------------------------------------------------------


async def test_states_changed_once_per_submit_call_and_per_reported_batch(journal: Journal) -> None:
    backend = ThreadedBackend()
    async with Session(backends=[backend]) as session:
        first = [ComputeTask(function=workloads.square, args=(i,)) for i in range(10)]
        await session.submit_tasks(first)
        await session.wait_tasks(first, timeout=NO_HANG)
        second = [ComputeTask(function=workloads.fail, args=("x",)) for _ in range(3)]
        await session.submit_tasks(second)
        await session.wait_tasks(second, timeout=NO_HANG)
    assert journal.batches == [["SUBMITTED"] * 10, ["DONE"] * 10, ["SUBMITTED"] * 3, ["FAILED"] * 3]
    assert journal.threads == {threading.get_ident()}  # always on the loop thread


async def test_states_changed_gets_one_batch_for_a_burst_of_thread_reports(journal: Journal) -> None:
    release = threading.Event()
    backend = ThreadedBackend(per_task_reports=True, release=release)
    async with Session(backends=[backend]) as session:
        tasks = [ComputeTask(function=workloads.square, args=(i,)) for i in range(300)]
        await session.submit_tasks(tasks)
        release.set()
        assert backend.reported.wait(NO_HANG)  # all 300 report() calls made while the loop waits
        await session.wait_tasks(tasks, timeout=NO_HANG)
    assert journal.batches == [["SUBMITTED"] * 300, ["DONE"] * 300]


async def test_submission_is_announced_before_a_backend_that_ends_tasks_at_once(journal: Journal) -> None:
    # noop reports from inside its submit_tasks: plugins must still hear SUBMITTED first.
    async with Session(backends=["noop"]) as session:
        tasks = [ComputeTask(function=workloads.add) for _ in range(4)]
        futures = await session.submit_tasks(tasks)
        assert all(f.done() for f in futures)
    assert journal.batches == [["SUBMITTED"] * 4, ["DONE"] * 4]


async def test_states_changed_sees_cancellations_and_close(journal: Journal) -> None:
    session = Session()
    async with session:
        running = ComputeTask(executable="/bin/sleep", arguments=["60"])
        left = ComputeTask(executable="/bin/sleep", arguments=["60"])
        await session.submit_tasks([running, left])
        assert await session.cancel_task(running)
    assert journal.batches[0] == ["SUBMITTED", "SUBMITTED"]
    assert ["CANCELED"] in journal.batches[1:]
    assert journal.batches[-1] == ["CANCELED"]
    assert (running.state, left.state) == ("CANCELED", "CANCELED")


async def test_unregistered_plugin_is_no_longer_called() -> None:
    plugin = Journal()
    rhapsody.register_plugin(plugin, name="short-lived-journal")
    rhapsody.unregister_plugin(plugin)
    async with Session(backends=["noop"]) as session:
        task = ComputeTask(function=workloads.add)
        await session.submit_tasks([task])
    assert plugin.batches == []
    assert task.state == "DONE"


async def test_late_reports_that_change_nothing_are_not_announced(journal: Journal) -> None:
    backend = StuckBackend(hang=False)
    session = Session(backends=[backend])
    async with session:
        task = ComputeTask(function=workloads.add)
        await session.submit_tasks([task])
    assert task.state == "CANCELED"  # abandoned when the session closed
    assert journal.batches == [["SUBMITTED"], ["CANCELED"]]
    # the engine finishes it afterwards: the task stays CANCELED and plugins hear nothing
    backend.report([(task, "RUNNING"), (task, "DONE")])
    assert task.state == "CANCELED"
    assert journal.batches == [["SUBMITTED"], ["CANCELED"]]


async def test_plugin_registered_after_session_creation_is_heard() -> None:
    import rhapsody
    from rhapsody import ComputeTask, Session

    class Late:
        def __init__(self) -> None:
            self.states: list[str] = []

        @rhapsody.hookimpl
        def rhapsody_task_states_changed(self, tasks):  # type: ignore[no-untyped-def]
            self.states.extend(t.state for t in tasks)

    async with Session(backends=["noop"]) as session:
        late = Late()
        rhapsody.register_plugin(late)
        try:
            task = ComputeTask(function=print)
            await session.submit_tasks([task])
            await session.wait_tasks([task])
        finally:
            rhapsody.unregister_plugin(late)
        assert late.states == ["SUBMITTED", "DONE"]


def test_empty_backend_list_is_an_error() -> None:
    import pytest

    from rhapsody import Session

    with pytest.raises(ValueError, match=r"Session\(backends=\[\]\) has no backend"):
        Session(backends=[])
