"""A worker killed in the middle of a task: one WorkerLostError, re-run by the session.

Workers are killed for real (SIGKILL from the task itself or from the test); the nanny starts a
new worker process each time. Every wait is bounded by ``run``'s timeout.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import dask
import distributed
import pytest

import rhapsody
import rhapsody_dask
from rhapsody import ComputeTask, Session
from rhapsody_dask import DaskBackend, WorkerLostError


def write_pid_and_sleep(path: str) -> str:
    pathlib.Path(path).write_text(str(os.getpid()))
    time.sleep(300)
    return "never"


def die_first_time(marker: str) -> str:
    """Kill the worker process running this the first time; succeed on the next attempt."""
    with open(marker, "a") as log:
        log.write(f"{os.getpid()}\n")
    if len(pathlib.Path(marker).read_text().splitlines()) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def always_die(marker: str) -> None:
    with open(marker, "a") as log:
        log.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def healthy(i: int) -> int:
    time.sleep(0.02)  # still in flight, beside the killer, while workers die
    return i * i


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 240))


def test_one_worker_lost_error_type_for_all_backends() -> None:
    assert rhapsody_dask.WorkerLostError is rhapsody.WorkerLostError


def test_worker_killed_mid_task_fails_the_task_naming_the_worker(tmp_path: pathlib.Path) -> None:
    pid_file = tmp_path / "worker.pid"

    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=2, threads_per_worker=1)]) as session:
            task = ComputeTask(function=write_pid_and_sleep, args=(str(pid_file),), retries=0)
            [future] = await session.submit_tasks([task])
            while not pid_file.exists() or not pid_file.read_text():
                await asyncio.sleep(0.05)
            worker_pid = int(pid_file.read_text())
            assert worker_pid != os.getpid()
            os.kill(worker_pid, signal.SIGKILL)
            with pytest.raises(rhapsody.WorkerLostError, match=r"its worker \(tcp://"):
                await future
            assert (task.state, task.retried) == ("FAILED", 0)
            assert task.exception.uid == task.uid
            assert task.exception.worker.startswith("tcp://")
            assert type(task.exception.__cause__).__name__ == "KilledWorker"
            # The nanny restarts the worker: the backend keeps working.
            after = [ComputeTask(function=pow, args=(2, i)) for i in range(10)]
            await session.submit_tasks(after)
            await session.wait_tasks(after)
            assert [t.return_value for t in after] == [2 ** i for i in range(10)]

    run(body())


def test_task_whose_worker_dies_once_is_run_again_by_the_session(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "attempts"

    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=2, threads_per_worker=1)]) as session:
            task = ComputeTask(function=die_first_time, args=(str(marker),))  # default retries=3
            [future] = await session.submit_tasks([task])
            assert await future is task
            assert (task.state, task.return_value, task.retried) == ("DONE", "survived", 1)
            pids = marker.read_text().split()
            assert len(pids) == 2 and pids[0] != pids[1]  # a second worker process ran it

    run(body())


def test_task_that_keeps_killing_workers_fails_and_the_run_goes_on(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "attempts"

    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=2, threads_per_worker=1)]) as session:
            # The killer dies retries + 1 = 3 times. A healthy task queued on a worker it kills
            # is run again by the backend, uncharged: every healthy task ends DONE, never retried.
            killer = ComputeTask(function=always_die, args=(str(marker),), retries=2)
            tasks = [ComputeTask(function=healthy, args=(i,)) for i in range(50)]
            await session.submit_tasks([*tasks[:25], killer, *tasks[25:]])
            await session.wait_tasks([killer, *tasks])
            assert killer.state == "FAILED"
            assert isinstance(killer.exception, WorkerLostError)
            assert killer.exception.worker.startswith("tcp://")
            assert killer.retried == 2
            # The session's re-runs were the only ones (allowed-failures = 0): never multiplied.
            assert 1 <= len(marker.read_text().split()) <= 3
            assert [(t.state, t.exception, t.retried) for t in tasks] == [("DONE", None, 0)] * 50
            assert [t.return_value for t in tasks] == [i * i for i in range(50)]

    run(body())


def test_on_a_given_cluster_dask_retries_count_and_are_not_multiplied(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "attempts"

    async def body() -> None:
        # Dask's own policy on a cluster the backend is given: each lost worker re-runs the
        # task, up to allowed-failures (1 here) times, before KilledWorker.
        with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
            cluster = distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        try:
            async with Session(backends=[DaskBackend(cluster=cluster)]) as session:
                killer = ComputeTask(function=always_die, args=(str(marker),), retries=1)
                tasks = [ComputeTask(function=healthy, args=(i,)) for i in range(50)]
                await session.submit_tasks([*tasks[:25], killer, *tasks[25:]])
                await session.wait_tasks([killer, *tasks])
                # Dask re-runs a task that dies once by itself; the re-run is counted all the same.
                once = ComputeTask(function=die_first_time, args=(str(tmp_path / "once"),))
                await session.submit_tasks([once])
                await session.wait_tasks([once])
                assert (once.state, once.return_value, once.retried) == ("DONE", "survived", 1)
                assert killer.state == "FAILED"
                assert isinstance(killer.exception, WorkerLostError)
                assert killer.exception.worker.startswith("tcp://")
                # Dask's one re-run is counted: retries=1 is used up, the session adds none.
                assert killer.retried == 1
                assert 1 <= len(marker.read_text().split()) <= 2
                assert [t.state for t in tasks] == ["DONE"] * 50
        finally:
            await asyncio.get_running_loop().run_in_executor(None, cluster.close, 30)

    run(body())


def test_tasks_queued_beside_a_worker_killer_are_run_again_uncharged(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "attempts"
    requeued: list[str] = []
    resubmit = DaskBackend._resubmit_bystanders

    def spy(self: DaskBackend, bystanders: list[Any], updates: list[Any]) -> None:
        requeued.extend(task.uid for task, _ in bystanders)
        resubmit(self, bystanders, updates)

    monkeypatch.setattr(DaskBackend, "_resubmit_bystanders", spy)

    async def body() -> None:
        # Unbounded saturation: the scheduler sends every task to a worker at once, so each
        # worker the killer ends holds many tasks that were only queued there.
        with dask.config.set({"distributed.scheduler.worker-saturation": float("inf")}):
            backend = DaskBackend(n_workers=2, threads_per_worker=1)
            async with Session(backends=[backend]) as session:
                killer = ComputeTask(function=always_die, args=(str(marker),), retries=2)
                tasks = [ComputeTask(function=healthy, args=(i,)) for i in range(200)]
                await session.submit_tasks([*tasks[:100], killer, *tasks[100:]])
                await session.wait_tasks([killer, *tasks])
        assert (killer.state, killer.retried) == ("FAILED", 2)
        assert isinstance(killer.exception, WorkerLostError)
        assert len(marker.read_text().split()) == 3  # charged each time, and only it
        assert [(t.state, t.retried, t.exception) for t in tasks] == [("DONE", 0, None)] * 200
        assert [t.return_value for t in tasks] == [i * i for i in range(200)]
        # Tasks were lost beside the killer, and ran again without being charged for it.
        assert requeued and set(requeued) <= {t.uid for t in tasks}

    run(body())


def test_tasks_lost_beside_a_killer_with_default_saturation_are_not_charged(
    tmp_path: pathlib.Path,
) -> None:
    marker = tmp_path / "attempts"

    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=2, threads_per_worker=1)]) as session:
            killer = ComputeTask(function=always_die, args=(str(marker),), retries=2)
            tasks = [ComputeTask(function=healthy, args=(i,)) for i in range(200)]
            await session.submit_tasks([*tasks[:100], killer, *tasks[100:]])
            await session.wait_tasks([killer, *tasks])
            assert (killer.state, killer.retried) == ("FAILED", 2)
            assert [(t.state, t.retried) for t in tasks] == [("DONE", 0)] * 200

    run(body())


def _mark_in_child(directory: str, marker_id: int, end: bool) -> int:
    """Run the worker-side marking in a real process that then exits; return its pid."""
    code = (
        "import os, sys; from rhapsody_dask import worker as b; "
        f"h = b._begin({directory!r}, {marker_id}); "
        f"b._end(h) if {end} else None; print(os.getpid())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_markers_say_which_task_a_dead_worker_was_executing() -> None:
    from rhapsody.builtin.worker_markers import WorkerMarkers
    from rhapsody_dask import backend as module
    from rhapsody_dask import worker

    markers = WorkerMarkers()
    try:
        executing = _mark_in_child(markers.directory, 7, end=False)
        finished = _mark_in_child(markers.directory, 8, end=True)
        assert module._started_in(markers, executing) == {7}
        assert module._started_in(markers, finished) == set()
        # A process that is still alive here (a worker of another host may have its pid): its
        # markers say nothing about the dead worker, so its lost tasks are all charged.
        handle = worker._begin(markers.directory, 9)
        assert handle is not None
        assert module._started_in(markers, os.getpid()) is None
        worker._end(handle)
        # No marker of that pid here (a worker on another host): cannot tell either.
        assert module._started_in(markers, 2 ** 22 + 12345) is None
    finally:
        markers.close()
