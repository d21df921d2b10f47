"""Portable resources on Dask: ``ComputeTask(resources=...)`` as the worker resources CPU, GPU, MEMORY.

One real cluster for the module (conftest's ``portable_cluster``), two worker processes under
nannies, four threads each: "gpu" advertises CPU=4, GPU=2, MEMORY=1024 and "big" advertises
CPU=4, MEMORY=4096. Tasks write their own start and end times; overlaps are read from those,
never from how long a run took.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import distributed
import pytest

from rhapsody import ComputeTask, RhapsodyError, Session
from rhapsody_dask import DaskBackend, UnsatisfiableResourcesError
from rhapsody_dask.resources import portable_resources

STEP = 180  # bound on each test's whole run: a loaded 2-core machine is slow, never hung
DOC = Path(__file__).parents[2] / "docs" / "backends" / "dask.md"


@pytest.fixture(scope="module")
def cluster(portable_cluster: Any) -> Any:
    """The module's cluster under a short name."""
    return portable_cluster


# -- run inside the workers ------------------------------------------------------------------

def span(seconds: float) -> tuple[str, float, float]:
    """(worker name, start, end) of a task that holds its slot for ``seconds``."""
    start = time.time()
    time.sleep(seconds)
    return str(distributed.get_worker().name), start, time.time()


def in_groups(directory: str, size: int) -> tuple[str, float, float]:
    """Start, then wait until ``size - 1`` more tasks have started beside this one (60 s at most).

    The k-th task to start (k = 1, 2, ...) waits until ``size * ceil(k / size)`` tasks have
    started: where ``size`` such tasks may run at once they start in groups and all finish; where
    fewer may, the first of a group waits in vain and raises.
    """
    start = time.time()
    k = 0
    while True:
        k += 1
        try:
            os.close(os.open(os.path.join(directory, f"started-{k}"), os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            continue
    wanted = size * math.ceil(k / size)
    deadline = time.monotonic() + 60
    while len(os.listdir(directory)) < wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {k}: fewer than {size} tasks started together in 60 s")
        time.sleep(0.02)
    return str(distributed.get_worker().name), start, time.time()


# -- helpers ---------------------------------------------------------------------------------

def peak(spans: list[tuple[str, float, float]]) -> int:
    """Most tasks running at one moment (an end at the same instant as a start comes first)."""
    events = sorted([(start, 1) for _, start, _ in spans] + [(end, -1) for _, _, end in spans])
    running = highest = 0
    for _, step in events:
        running += step
        highest = max(highest, running)
    return highest


async def run_all(cluster: Any, tasks: list[ComputeTask]) -> list[ComputeTask]:
    async with Session(backends=[DaskBackend(cluster=cluster)]) as session:
        await session.submit_tasks(tasks)
        return await session.wait_tasks(tasks, timeout=STEP)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, STEP))


# -- the mapping -----------------------------------------------------------------------------

@pytest.mark.parametrize(("request_", "dask"), [
    ({"cores_per_rank": 1}, {"CPU": 1}),
    ({"cores_per_rank": 3, "gpus_per_rank": 2}, {"CPU": 3, "GPU": 2}),
    ({"gpus_per_rank": 0.5}, {"CPU": 1, "GPU": 0.5}),
    ({"gpus_per_rank": 0, "memory_per_rank": 512}, {"CPU": 1, "MEMORY": 512}),
    ({"ranks": 1, "cores_per_rank": 2, "gpus_per_rank": 1, "memory_per_rank": 2048},
     {"CPU": 2, "GPU": 1, "MEMORY": 2048}),
])
def test_request_becomes_dask_resources(request_: dict[str, Any], dask: dict[str, float]) -> None:
    assert portable_resources(ComputeTask(function=span, resources=request_)) == dask
    assert portable_resources(ComputeTask(function=span)) is None


# -- on the cluster --------------------------------------------------------------------------

def test_placement_follows_the_request(cluster: Any) -> None:
    gpu = [ComputeTask(function=span, args=(0,), resources={"gpus_per_rank": 1}) for _ in range(4)]
    memory = [ComputeTask(function=span, args=(0,), resources={"memory_per_rank": 3000})
              for _ in range(4)]
    shell = ComputeTask(executable="/bin/sh", arguments=["-c", "echo on-gpu"],
                        resources={"gpus_per_rank": 0.5})
    run(run_all(cluster, [*gpu, *memory, shell]))
    assert all(t.state == "DONE" for t in [*gpu, *memory, shell]), [t.exception for t in gpu + memory]
    assert {t.return_value[0] for t in gpu} == {"gpu"}  # only "gpu" advertises GPU
    assert {t.return_value[0] for t in memory} == {"big"}  # only "big" has 3000 MiB for one task
    assert shell.stdout.strip() == "on-gpu"


def test_gpu_count_limits_how_many_gpu_tasks_run_at_once(cluster: Any, tmp_path: Path) -> None:
    # "gpu" has 4 threads and CPU=4, so only its GPU=2 keeps a third 1-GPU task waiting.
    # in_groups proves two ran together (each waited for a partner); the spans show never three.
    spans = run_in_groups(cluster, tmp_path / "whole", size=2, gpus=1, count=6)
    assert peak(spans) == 2
    # Half a GPU each: four run together on the two GPUs.
    spans = run_in_groups(cluster, tmp_path / "halves", size=4, gpus=0.5, count=8)
    assert {worker for worker, _, _ in spans} == {"gpu"}


def run_in_groups(cluster: Any, directory: Path, *, size: int, gpus: float,
                  count: int) -> list[tuple[str, float, float]]:
    directory.mkdir()
    tasks = [ComputeTask(function=in_groups, args=(str(directory), size),
                         resources={"gpus_per_rank": gpus}) for _ in range(count)]
    run(run_all(cluster, tasks))
    assert all(t.state == "DONE" for t in tasks), [t.exception for t in tasks]
    return [t.return_value for t in tasks]


def test_a_whole_worker_task_runs_alone_and_small_ones_pack(cluster: Any) -> None:
    whole = ComputeTask(function=span, args=(0.5,), resources={"cores_per_rank": 4})
    small = [ComputeTask(function=span, args=(0.1,), resources={"cores_per_rank": 1})
             for _ in range(12)]
    run(run_all(cluster, [*small[:6], whole, *small[6:]]))
    assert all(t.state == "DONE" for t in [whole, *small])
    where, start, end = whole.return_value
    beside = [s for s in (t.return_value for t in small) if s[0] == where and s[1] < end and s[2] > start]
    assert beside == [], f"1-core tasks ran on {where} while its 4-core task did: {beside}"
    for worker in ("gpu", "big"):  # never more cores in use on a worker than its CPU=4
        assert peak([t.return_value for t in small if t.return_value[0] == worker]) <= 4


def test_a_request_no_worker_can_supply_fails_at_once_naming_it(cluster: Any) -> None:
    async def body() -> None:
        async with Session(backends=[DaskBackend(cluster=cluster)]) as session:
            gpus = ComputeTask(function=span, args=(0,), resources={"gpus_per_rank": 3})
            memory = ComputeTask(executable="/bin/true", resources={"memory_per_rank": 8192})
            cores = ComputeTask(function=span, args=(0,), resources={"cores_per_rank": 8})
            fine = ComputeTask(function=span, args=(0,), resources={"gpus_per_rank": 2})
            futures = await session.submit_tasks([gpus, memory, cores, fine])
            assert all(f.done() for f in futures[:3])  # failed during submit: nothing waited
            for future, name, most in zip(futures, ("GPU", "MEMORY", "CPU"), (2, 4096, 4)):
                with pytest.raises(UnsatisfiableResourcesError,
                                   match=rf"supply resource {name} \(most on one worker: {most}\)"):
                    await future
            assert gpus.exception.missing == ["GPU"]
            assert isinstance(gpus.exception, RhapsodyError)  # catchable as any error of ours
            assert "ComputeTask(resources=...) asks Dask for GPU" in str(gpus.exception)
            assert (memory.exit_code, memory.stderr) == (None, str(memory.exception))
            assert (await futures[3]).return_value[0] == "gpu"

    run(body())


def test_ranks_above_one_are_refused_at_submit_naming_who_can(cluster: Any) -> None:
    async def body() -> None:
        async with Session(backends=[DaskBackend(cluster=cluster)]) as session:
            mpi = ComputeTask(executable="/bin/true", resources={"ranks": 2})
            other = ComputeTask(function=span, args=(0,))
            with pytest.raises(ValueError, match=r"resources\['ranks'\]=2 cannot run on Dask") as caught:
                await session.submit_tasks([other, mpi])
            assert "radical or dragon" in str(caught.value) and "mpi_launcher" in str(caught.value)
            # The escape hatch cannot make Dask launch MPI either.
            hatch = ComputeTask(function=span, resources={"ranks": 4},
                                task_backend_specific_kwargs={"resources": {"CPU": 1}})
            with pytest.raises(ValueError, match=r"resources\['ranks'\]=4"):
                await session.submit_tasks([hatch])
            assert (mpi.state, other.state, hatch.state) == ("NEW", "NEW", "NEW")
            assert session.in_flight == 0

    run(body())


def test_task_backend_specific_resources_win(cluster: Any) -> None:
    # The portable request alone would run on "gpu"; the Dask resources given replace it.
    moved = ComputeTask(function=span, args=(0,), resources={"gpus_per_rank": 1},
                        task_backend_specific_kwargs={"resources": {"MEMORY": 3000}})
    # And an unsatisfiable Dask request is not rescued by a satisfiable portable one.
    refused = ComputeTask(function=span, args=(0,), resources={"cores_per_rank": 1},
                          task_backend_specific_kwargs={"resources": {"TPU": 1}})
    run(run_all(cluster, [moved, refused]))
    assert (moved.state, moved.return_value[0]) == ("DONE", "big")
    assert refused.state == "FAILED" and isinstance(refused.exception, UnsatisfiableResourcesError)
    assert refused.exception.missing == ["TPU"]


def test_documented_example_runs_as_written(tmp_path: Path) -> None:
    section = DOC.read_text().split("## Portable resources", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    script = tmp_path / "portable_dask.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "gpu task: DONE",
        "whole-worker task: DONE",
        "small tasks: ['DONE', 'DONE', 'DONE', 'DONE']",
        "three GPUs: FAILED UnsatisfiableResourcesError",
    ]


def test_the_backends_own_cluster_offers_its_threads_as_cpu() -> None:
    async def body() -> None:
        backend = DaskBackend(n_workers=1, threads_per_worker=2, processes=False)
        async with Session(backends=[backend]) as session:
            workers = backend.client.scheduler_info()["workers"]
            assert [w["resources"] for w in workers.values()] == [{"CPU": 2}]
            fits = ComputeTask(function=span, args=(0,), resources={"cores_per_rank": 2})
            too_big = ComputeTask(function=span, args=(0,), resources={"cores_per_rank": 3})
            futures = await session.submit_tasks([fits, too_big])
            assert (await futures[0]).state == "DONE"
            with pytest.raises(UnsatisfiableResourcesError, match=r"CPU \(most on one worker: 2\)"):
                await futures[1]

    run(body())
