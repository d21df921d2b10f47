"""Resources: routing to workers that advertise them, and failing (never hanging) when none can.

The cluster has a plain worker "cpu" and a worker "gpu" advertising GPU=1; a third worker
advertising TPU=1 joins and leaves as a real ``dask worker`` process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import distributed
import pytest

from rhapsody import ComputeTask, Session
from rhapsody_dask import DaskBackend, UnsatisfiableResourcesError
from rhapsody_dask.resources import check_resources, why_unsatisfiable


def worker_name() -> str:
    return str(distributed.get_worker().name)


def sleep_then_name(seconds: float) -> str:
    time.sleep(seconds)
    return worker_name()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 180))


def test_gpu_tasks_run_only_on_the_gpu_worker(gpu_cluster: Any) -> None:
    async def body() -> None:
        async with Session(backends=[DaskBackend(cluster=gpu_cluster)]) as session:
            gpu = [ComputeTask(function=worker_name, task_backend_specific_kwargs={"resources": {"GPU": 1}})
                   for _ in range(8)]
            shell = ComputeTask(executable="/bin/sh", arguments=["-c", "echo on-gpu"],
                                task_backend_specific_kwargs={"resources": {"GPU": 1}})
            plain = [ComputeTask(function=worker_name) for _ in range(8)]
            await session.submit_tasks([*gpu, shell, *plain])
            await session.wait_tasks([*gpu, shell, *plain])
            assert {t.return_value for t in gpu} == {"gpu"}
            assert (shell.state, shell.stdout.strip()) == ("DONE", "on-gpu")
            assert all(t.state == "DONE" for t in plain)

    run(body())


def test_unsatisfiable_resource_fails_at_once_naming_it(gpu_cluster: Any) -> None:
    async def body() -> None:
        async with Session(backends=[DaskBackend(cluster=gpu_cluster)]) as session:
            tpu = ComputeTask(function=worker_name, task_backend_specific_kwargs={"resources": {"TPU": 1}})
            two_gpus = ComputeTask(function=worker_name,
                                   task_backend_specific_kwargs={"resources": {"GPU": 2}})
            fine = ComputeTask(function=worker_name, task_backend_specific_kwargs={"resources": {"GPU": 1}})
            futures = await session.submit_tasks([tpu, two_gpus, fine])
            # Failed during submit: the futures are already resolved, nothing waited on Dask.
            assert futures[0].done() and futures[1].done()
            with pytest.raises(UnsatisfiableResourcesError, match="supply resource TPU"):
                await futures[0]
            with pytest.raises(UnsatisfiableResourcesError, match=r"GPU \(most on one worker: 1\)"):
                await futures[1]
            assert tpu.exception.missing == ["TPU"]
            assert tpu.state == two_gpus.state == "FAILED"
            assert await futures[2] is fine and fine.return_value == "gpu"

    run(body())


def _start_tpu_worker(address: str) -> subprocess.Popen[bytes]:
    # The worker unpickles this module's functions by reference: give it the test's sys.path.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen([
        sys.executable, "-m", "distributed.cli.dask_worker", address, "--name", "tpu",
        "--nthreads", "1", "--resources", "TPU=1", "--no-dashboard", "--no-nanny",
    ], env=env)


def _wait_for_worker(client: distributed.Client, name: str, present: bool) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        names = {w["name"] for w in client.scheduler_info()["workers"].values()}
        if (name in names) == present:
            return
        time.sleep(0.2)
    raise AssertionError(f"worker {name!r} {'never joined' if present else 'never left'}")


def test_workers_joining_and_leaving_change_what_is_satisfiable(gpu_cluster: Any) -> None:
    async def body(client: distributed.Client) -> None:
        backend = DaskBackend(cluster=gpu_cluster, unsatisfiable_timeout=2)
        async with Session(backends=[backend]) as session:
            before = ComputeTask(function=worker_name, task_backend_specific_kwargs={"resources": {"TPU": 1}})
            await session.submit_tasks([before])
            await session.wait_tasks([before])
            assert isinstance(before.exception, UnsatisfiableResourcesError)

            worker = _start_tpu_worker(gpu_cluster.scheduler_address)
            try:
                await asyncio.to_thread(_wait_for_worker, client, "tpu", True)
                after = ComputeTask(function=worker_name,
                                    task_backend_specific_kwargs={"resources": {"TPU": 1}})
                await session.submit_tasks([after])
                await session.wait_tasks([after])
                assert (after.state, after.return_value) == ("DONE", "tpu")

                # One TPU task runs, one waits behind it; then the only TPU worker goes away.
                running = ComputeTask(function=sleep_then_name, args=(120,),
                                      task_backend_specific_kwargs={"resources": {"TPU": 1}})
                waiting = ComputeTask(function=worker_name,
                                      task_backend_specific_kwargs={"resources": {"TPU": 1}})
                await session.submit_tasks([running, waiting])
                await asyncio.sleep(1)
            finally:
                worker.send_signal(signal.SIGKILL)
                worker.wait(60)
            await asyncio.to_thread(_wait_for_worker, client, "tpu", False)
            await session.wait_tasks([running, waiting], timeout=60)
            for task in (running, waiting):
                assert task.state == "FAILED"
                assert isinstance(task.exception, UnsatisfiableResourcesError)
                assert "TPU" in str(task.exception) and "waited 2 s" in str(task.exception)
            # The cluster and the backend carry on.
            plain = ComputeTask(function=worker_name)
            await session.submit_tasks([plain])
            await session.wait_tasks([plain])
            assert plain.state == "DONE"

    with distributed.Client(gpu_cluster) as client:
        run(body(client))


@pytest.mark.parametrize(("value", "error", "message"), [
    ([("GPU", 1)], TypeError, "resources must be a dict"),
    ({"GPU": "one"}, TypeError, r"resources\['GPU'\] must be a number"),
    ({"GPU": True}, TypeError, r"resources\['GPU'\] must be a number"),
    ({"GPU": 0}, ValueError, r"resources\['GPU'\] must be > 0"),
    ({"": 1}, TypeError, "names must be non-empty strings"),
])
def test_bad_resources_are_rejected_at_submit(value: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        check_resources("t1", value)


def test_why_unsatisfiable_explains_each_case() -> None:
    assert why_unsatisfiable({"GPU": 1}, [{}, {"GPU": 2}]) is None
    missing, why = why_unsatisfiable({"GPU": 1}, [])
    assert missing == ["GPU"] and "has no workers" in why
    missing, why = why_unsatisfiable({"GPU": 1, "FPGA": 1}, [{"GPU": 1}, {"FPGA": 1}])
    assert missing == ["GPU", "FPGA"] and "no single worker of the Dask cluster supplies all of GPU=1, FPGA=1" in why
    missing, why = why_unsatisfiable({"GPU": 4, "CPU": 1}, [{"GPU": 2, "CPU": 8}])
    assert missing == ["GPU"] and "GPU (most on one worker: 2)" in why


def test_process_pid_is_not_a_worker() -> None:
    # Sanity for the tests above: worker_name only works inside a Dask worker.
    with pytest.raises(ValueError):
        worker_name()
    assert os.getpid() > 0


def test_unsatisfiable_executable_carries_the_message_as_stderr(gpu_cluster: Any) -> None:
    async def body() -> None:
        async with Session(backends=[DaskBackend(cluster=gpu_cluster)]) as session:
            task = ComputeTask(executable="/bin/true",
                               task_backend_specific_kwargs={"resources": {"TPU": 1}})
            [future] = await session.submit_tasks([task])
            with pytest.raises(UnsatisfiableResourcesError,
                               match=r"resource TPU \(no worker advertises it\)"):
                await future
            # Never started: like any executable that could not run, a message and no exit code.
            assert (task.state, task.exit_code) == ("FAILED", None)
            assert task.stderr == str(task.exception)

    run(body())


def test_unsatisfiable_on_a_cluster_without_resources_says_so_plainly() -> None:
    async def body() -> None:
        async with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                            dashboard_address=None, asynchronous=True) as cluster, \
                Session(backends=[DaskBackend(cluster=cluster)]) as session:
            shell = ComputeTask(executable="/bin/true",
                                task_backend_specific_kwargs={"resources": {"GPU": 1}})
            function = ComputeTask(function=worker_name,
                                   task_backend_specific_kwargs={"resources": {"GPU": 1}})
            futures = await session.submit_tasks([shell, function])
            for future in futures:
                with pytest.raises(UnsatisfiableResourcesError,
                                   match=r"resource GPU \(no worker advertises any resources\)"):
                    await future
            assert (shell.exit_code, shell.stderr) == (None, str(shell.exception))
            assert "GPU (no worker advertises any resources)" in shell.stderr
            assert function.stderr == ""  # a function task has no stderr of its own

    run(body())
