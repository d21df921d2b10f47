"""What only the Dragon backend does on its Batch, on a real Dragon runtime (one Batch for the module,
functions on it too: ``function_mode="batch"``; the worker pool is tested in test_pool.py)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dragon_support import WORKERS, Harness, harness, runtime_missing, spinner

import rhapsody
from rhapsody.testing import workloads

pytestmark = pytest.mark.skipif(bool(runtime_missing()), reason=runtime_missing() or "-")


@pytest.fixture(scope="module")
def dragon() -> Iterator[Harness]:
    # The Batch path for functions too: these tests look at the Batch's own bookkeeping.
    yield from harness(function_mode="batch")


def _shell(script: str, **kwargs: Any) -> rhapsody.ComputeTask:
    return rhapsody.ComputeTask(executable="/bin/sh", arguments=["-c", script], **kwargs)


def test_monitor_starts_on_first_submit_and_keeps_nothing(dragon: Harness) -> None:
    backend = dragon.backend
    assert backend._monitor_thread is None, "the monitor must not start before the first submit"
    sizes: list[int] = []
    report = backend.report

    def counting_report(updates: Any) -> None:
        sizes.append(len(updates))
        report(updates)

    backend.report = counting_report
    try:
        tasks = [rhapsody.ComputeTask(function=workloads.square, args=(i,)) for i in range(12)]
        dragon.run(dragon.session.submit_tasks(tasks))
        assert backend._monitor_thread is not None and backend._monitor_thread.is_alive()
        dragon.run(dragon.session.wait_tasks(tasks))
    finally:
        del backend.report
    assert [t.return_value for t in tasks] == [i * i for i in range(12)]
    # Every completion was handed over, in batches (one report per monitor sweep).
    assert sum(sizes) == 12 and len(sizes) <= 12
    assert len(backend.in_flight) == 0
    # Results were popped from Batch's results DDict, not left in it.
    assert len(backend._batch.results_ddict) == 0


@pytest.mark.skipif(WORKERS < 2, reason="needs two Batch workers (4+ logical CPUs) to run both at once")
def test_quick_task_is_not_held_back_by_a_slow_one_launched_with_it(dragon: Harness) -> None:
    # Batch notifies completions per launch group; the backend reads the results DDict instead.
    slow = rhapsody.ComputeTask(function=workloads.sleep, args=(30,))
    quick = rhapsody.ComputeTask(function=workloads.add, args=(1, 2))

    async def body() -> float:
        await dragon.session.submit_tasks([slow, quick])
        started = time.monotonic()
        await dragon.session.wait_tasks([quick], timeout=20)
        return time.monotonic() - started

    assert dragon.run(body()) < 20
    assert quick.return_value == 3 and slow.state == "SUBMITTED"
    assert dragon.run(dragon.session.cancel_task(slow)) is True


def test_fence_waits_for_every_submitted_task(dragon: Harness) -> None:
    tasks = [rhapsody.ComputeTask(function=workloads.sleep, args=(0.2,)) for _ in range(4)]

    async def body() -> None:
        await dragon.session.submit_tasks(tasks)
        await dragon.backend.fence(timeout=60)
        # Dragon has run them all: their completions are already on their way to the session.
        await dragon.session.wait_tasks(tasks, timeout=10)

    dragon.run(body())
    assert [t.state for t in tasks] == ["DONE"] * 4


def test_create_ddict_is_shared_with_tasks(dragon: Harness) -> None:
    def add_seed(ddict: Any, value: int) -> int:
        # Defined here so that cloudpickle ships it by value: workers cannot import test modules.
        ddict["answer"] = ddict["seed"] + value
        return ddict["answer"]

    async def body() -> Any:
        ddict = await dragon.backend.create_ddict(total_mem=32 * 1024**2)
        ddict["seed"] = 20
        task = rhapsody.ComputeTask(function=add_seed, args=(ddict, 22))
        await dragon.session.submit_tasks([task])
        await dragon.session.wait_tasks([task])
        return ddict, task

    ddict, task = dragon.run(body())
    assert task.state == "DONE", task.exception
    assert task.return_value == 42
    assert ddict["answer"] == 42


def test_create_ddict_bad_option_raises_dragons_error(dragon: Harness) -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        dragon.run(dragon.backend.create_ddict(no_such_option=1))


def test_process_templates_job_runs_in_the_template_cwd(dragon: Harness, tmp_path: pathlib.Path) -> None:
    task = rhapsody.ComputeTask(executable="/bin/pwd", task_backend_specific_kwargs={
        "process_templates": [(1, {"cwd": str(tmp_path), "env": {"RHAPSODY_RANKS": "1"}})]})
    dragon.run(dragon.session.submit_tasks([task]))
    dragon.run(dragon.session.wait_tasks([task]))
    assert (task.state, task.exit_code) == ("DONE", 0), task.exception
    assert os.path.realpath(task.stdout.strip()) == os.path.realpath(tmp_path)


def test_job_wider_than_the_batch_fails_clearly(dragon: Harness) -> None:
    backend = dragon.backend
    too_many = backend._cores_per_node * backend._node_count + 1
    task = rhapsody.ComputeTask(executable="/bin/true", task_backend_specific_kwargs={
        "process_templates": [(too_many, {})]})
    [future] = dragon.run(dragon.session.submit_tasks([task]))
    with pytest.raises(RuntimeError, match=f"cannot be placed: {too_many} ranks need"):
        dragon.run(future)
    assert task.state == "FAILED"


def test_host_outside_the_batch_fails_clearly(dragon: Harness) -> None:
    from dragon.infrastructure.policy import Policy

    policy = Policy(placement=Policy.Placement.HOST_NAME, host_name="rhapsody-no-such-host")
    task = rhapsody.ComputeTask(executable="/bin/true", task_backend_specific_kwargs={
        "process_template": {"policy": policy}})
    [future] = dragon.run(dragon.session.submit_tasks([task]))
    with pytest.raises(RuntimeError, match=r"host\(s\) \['rhapsody-no-such-host'\] outside"):
        dragon.run(future)
    # The Batch is unharmed.
    ok = rhapsody.ComputeTask(function=workloads.add, args=(1, 1))
    dragon.run(dragon.session.submit_tasks([ok]))
    assert dragon.run(dragon.session.wait_tasks([ok]))[0].return_value == 2


def test_executable_timeout_is_a_timeout_error(dragon: Harness) -> None:
    task = _shell("sleep 60", timeout=1)
    started = time.monotonic()
    [future] = dragon.run(dragon.session.submit_tasks([task]))
    with pytest.raises(TimeoutError, match="exceeded its timeout of 1"):
        dragon.run(future)
    assert time.monotonic() - started < 30
    assert task.state == "FAILED"


def test_cancel_running_function(dragon: Harness) -> None:
    task = rhapsody.ComputeTask(function=spinner(60))

    async def body() -> bool:
        await dragon.session.submit_tasks([task])
        await asyncio.sleep(2)
        return await dragon.session.cancel_task(task)

    assert dragon.run(body()) is True
    assert task.state == "CANCELED"

    async def drained() -> None:
        # The cancelled task leaves in_flight once Dragon's late completion has been dropped.
        while dragon.backend.in_flight:
            await asyncio.sleep(0.05)

    dragon.run(drained(), timeout=60)


def test_function_timeout_reaches_the_future(dragon: Harness) -> None:
    task = rhapsody.ComputeTask(function=spinner(30), timeout=1)
    [future] = dragon.run(dragon.session.submit_tasks([task]))
    with pytest.raises(TimeoutError):
        dragon.run(future)
    assert task.state == "FAILED"


def test_close_with_work_running_stops_it_and_joins_the_batch(dragon: Harness, tmp_path: pathlib.Path) -> None:
    # Last in the module: it closes the module's session. terminate() with work in flight once
    # brought the whole runtime down, so close stops the work first and joins the Batch.
    pid_file = tmp_path / "child.pid"
    program = _shell(f"sleep 300 & echo $! > {pid_file}; wait")
    function = rhapsody.ComputeTask(function=spinner(300))
    batch = dragon.backend._batch
    terminated: list[Any] = []
    terminate = batch.terminate
    batch.terminate = lambda *args, **kwargs: (terminated.append(args), terminate(*args, **kwargs))

    async def body() -> float:
        await dragon.session.submit_tasks([program, function])
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # the function has started too (two workers) or is queued
        started = time.monotonic()
        await dragon.session.close()
        return time.monotonic() - started

    took = dragon.run(body(), timeout=180)
    child = int(pid_file.read_text())
    assert (program.state, function.state) == ("CANCELED", "CANCELED")
    assert terminated == [], f"close fell back to Batch.terminate() after {took:.1f} s"
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"process {child} started by the task outlived close()")
