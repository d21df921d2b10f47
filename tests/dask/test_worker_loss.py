"""A worker killed in the middle of a task: the task fails saying so, or is retried when it asked."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import time
from typing import Any

import pytest

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


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 240))




def test_worker_killed_mid_task_fails_the_task_saying_so(tmp_path: pathlib.Path) -> None:
    pid_file = tmp_path / "worker.pid"

    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=2, threads_per_worker=1)]) as session:
            task = ComputeTask(function=write_pid_and_sleep, args=(str(pid_file),))
            [future] = await session.submit_tasks([task])
            while not pid_file.exists() or not pid_file.read_text():
                await asyncio.sleep(0.05)
            worker_pid = int(pid_file.read_text())
            assert worker_pid != os.getpid()
            os.kill(worker_pid, signal.SIGKILL)
            with pytest.raises(WorkerLostError, match="was lost"):
                await future
            assert task.state == "FAILED"
            assert task.exception.uid == task.uid
            assert task.exception.worker and task.exception.worker.startswith("tcp://")
            # The nanny restarts the worker: the backend keeps working.
            after = [ComputeTask(function=pow, args=(2, i)) for i in range(10)]
            await session.submit_tasks(after)
            await session.wait_tasks(after)
            assert [t.return_value for t in after] == [2 ** i for i in range(10)]

    run(body())


def test_task_that_asked_for_retries_runs_again_after_worker_loss(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "attempts"

    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=2, threads_per_worker=1)]) as session:
            task = ComputeTask(function=die_first_time, args=(str(marker),),
                               task_backend_specific_kwargs={"retries": 1})
            [future] = await session.submit_tasks([task])
            assert await future is task
            assert (task.state, task.return_value) == ("DONE", "survived")
            pids = marker.read_text().split()
            assert len(pids) == 2 and pids[0] != pids[1]  # a second worker process ran it

    run(body())


def test_retries_run_out_then_the_task_fails(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "attempts"

    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=2, threads_per_worker=1)]) as session:
            task = ComputeTask(function=always_die, args=(str(marker),),
                               task_backend_specific_kwargs={"retries": 2})
            await session.submit_tasks([task])
            await session.wait_tasks([task])
            assert task.state == "FAILED"
            assert isinstance(task.exception, WorkerLostError)
            # The first run and up to two retries: on a loaded machine a retry can land on a
            # worker that is itself being lost, which counts as an attempt without running.
            assert 2 <= len(marker.read_text().split()) <= 3

    run(body())
