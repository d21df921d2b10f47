"""The built-in concurrent backend beyond the conformance kit: pools, pickling, chunks, options."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from kept_tasks import TrackedTask, still_alive

from rhapsody import ComputeTask, Session, WorkerLostError, get_backend
from rhapsody.builtin.concurrent import ConcurrentBackend, _chunk_size
from rhapsody.testing import workloads

NO_HANG = 60.0


def touch(path: str) -> str:
    pathlib.Path(path).touch()
    return path


def make_lock() -> threading.Lock:
    return threading.Lock()


def exit_with(code: int) -> None:
    sys.exit(code)


def pid() -> int:
    return os.getpid()


def die_hard() -> None:
    os._exit(1)


@pytest.fixture(scope="module")
def process_pool() -> Iterator[ProcessPoolExecutor]:
    pool = ProcessPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def lone_worker_pool() -> Iterator[ProcessPoolExecutor]:
    """A one-worker pool per test: these tests break it, or need its only worker busy."""
    pool = ProcessPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


def on_processes(pool: ProcessPoolExecutor) -> Session:
    return Session(backends=[ConcurrentBackend(executor=pool)])


# -- construction ----------------------------------------------------------------------------


def test_executor_must_be_a_thread_or_process_pool() -> None:
    with pytest.raises(TypeError, match=r"concurrent: executor must be a ThreadPoolExecutor or "
                                        r"ProcessPoolExecutor, got object"):
        ConcurrentBackend(executor=object())  # type: ignore[arg-type]


@pytest.mark.parametrize(("option", "value"), [("max_workers", 0), ("max_subprocesses", -1),
                                               ("max_workers", "2"), ("max_subprocesses", 1.5)])
def test_pool_sizes_must_be_positive_integers(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"concurrent: {option} must be an integer >= 1, got {value!r}"):
        ConcurrentBackend(**{option: value})  # type: ignore[arg-type]


def test_unknown_option_via_get_backend() -> None:
    with pytest.raises(TypeError, match=r"^backend 'concurrent' \(ConcurrentBackend\) has no option "
                                        r"'n_workers'; its options are: executor, max_workers, processes, "
                                        r"max_subprocesses, cores, gpus, memory, mpi_launcher, name$"):
        get_backend("concurrent", n_workers=2)


async def test_owned_pool_is_shut_down_and_given_pool_is_not(process_pool: ProcessPoolExecutor) -> None:
    owned = ConcurrentBackend(max_workers=1)
    async with Session(backends=[owned]):
        pass
    with pytest.raises(RuntimeError, match=r"cannot schedule new futures after shutdown"):
        owned.executor.submit(workloads.add, 1, 2)
    given = ThreadPoolExecutor(max_workers=1)
    try:
        async with Session(backends=[ConcurrentBackend(executor=given)]) as session:
            task = ComputeTask(function=workloads.add, args=(1, 2))
            await session.submit_tasks([task])
            await session.wait_tasks([task], timeout=NO_HANG)
        assert given.submit(workloads.add, 2, 2).result(timeout=NO_HANG) == 4
    finally:
        given.shutdown()
    async with on_processes(process_pool):
        pass
    assert process_pool.submit(workloads.add, 3, 3).result(timeout=NO_HANG) == 6


# -- task options ----------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"env": {"A": 1}}, TypeError, r"env must be a dict of str to str, got \{'A': 1\}"),
    ({"env": ["A=1"]}, TypeError, r"env must be a dict of str to str, got \['A=1'\]"),
    ({"cwd": 5}, TypeError, r"cwd must be a path, got 5"),
    ({"shell": "yes"}, TypeError, r"shell must be True or False, got 'yes'"),
    ({"stdin": "x"}, ValueError, r"concurrent does not understand task_backend_specific_kwargs "
                                 r"\['stdin'\] \(it takes \['cwd', 'env', 'shell'\]\)"),
])
async def test_bad_executable_options(options: dict[str, object], error: type, message: str) -> None:
    async with Session() as session:
        task = ComputeTask(executable="/bin/true", task_backend_specific_kwargs=options)
        with pytest.raises(error, match=rf"task {task.uid}: {message}"):
            await session.submit_tasks([task])
        assert (task.state, session.in_flight) == ("NEW", 0)


async def test_function_tasks_take_no_options() -> None:
    async with Session() as session:
        task = ComputeTask(function=workloads.add, task_backend_specific_kwargs={"cwd": "/"})
        with pytest.raises(ValueError, match=rf"task {task.uid}: concurrent takes no "
                                             r"task_backend_specific_kwargs for function tasks, got \['cwd'\]"):
            await session.submit_tasks([task])


async def test_timeout_on_a_sync_function_is_rejected() -> None:
    async with Session() as session:
        task = ComputeTask(function=workloads.sleep, args=(0.1,), timeout=5)
        with pytest.raises(ValueError, match=rf"task {task.uid}: concurrent cannot interrupt a running "
                                             r"sync function, so timeout= works only for async functions "
                                             r"and executables"):
            await session.submit_tasks([task])
        assert session.in_flight == 0


async def test_one_bad_task_refuses_the_whole_call_before_anything_runs(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"
    async with Session() as session:
        runs = ComputeTask(executable="/bin/touch", arguments=[str(marker)])
        bad = ComputeTask(executable="/bin/true", task_backend_specific_kwargs={"shell": 1})
        with pytest.raises(TypeError, match=r"shell must be True or False"):
            await session.submit_tasks([runs, bad])
        await asyncio.sleep(0.3)
    assert not marker.exists()
    assert runs.state == "NEW"


async def test_shell_quotes_arguments() -> None:
    async with Session() as session:
        task = ComputeTask(executable="echo", arguments=["a  b", "$HOME", "x;y"],
                           task_backend_specific_kwargs={"shell": True})
        await session.submit_tasks([task])
        await session.wait_tasks([task], timeout=NO_HANG)
    assert task.stdout == "a  b $HOME x;y\n"


async def test_executable_not_found() -> None:
    async with Session() as session:
        task = ComputeTask(executable="rhapsody-no-such-program-anywhere")
        [future] = await session.submit_tasks([task])
        with pytest.raises(FileNotFoundError, match=r"rhapsody-no-such-program-anywhere"):
            await future
    assert task.state == "FAILED"
    assert task.exit_code is None
    assert task.stderr.startswith("FileNotFoundError: ")


async def test_missing_cwd_fails_the_task(tmp_path: pathlib.Path) -> None:
    async with Session() as session:
        task = ComputeTask(executable="/bin/pwd",
                           task_backend_specific_kwargs={"cwd": str(tmp_path / "absent")})
        await session.submit_tasks([task])
        await session.wait_tasks([task], timeout=NO_HANG)
    assert task.state == "FAILED"
    assert isinstance(task.exception, FileNotFoundError)


async def test_env_replaces_the_environment() -> None:
    async with Session() as session:
        task = ComputeTask(executable="/usr/bin/env", task_backend_specific_kwargs={"env": {"ONLY": "this"}})
        await session.submit_tasks([task])
        await session.wait_tasks([task], timeout=NO_HANG)
    assert task.stdout.strip() == "ONLY=this"


# -- functions on threads --------------------------------------------------------------------


async def test_sys_exit_in_a_thread_task_fails_only_that_task() -> None:
    async with Session(backends=[ConcurrentBackend(max_workers=1)]) as session:
        tasks = [ComputeTask(function=exit_with, args=(3,)),
                 ComputeTask(function=workloads.add, args=(1, 1))]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks, timeout=NO_HANG)
    assert [t.state for t in tasks] == ["FAILED", "DONE"]
    assert isinstance(tasks[0].exception, SystemExit) and tasks[0].exception.code == 3
    assert isinstance(tasks[0].future.exception(), SystemExit)
    assert tasks[1].return_value == 2


async def test_a_failed_thread_task_does_not_keep_its_chunk_alive() -> None:
    # A program keeps its failed tasks (to report them); their exceptions must not keep the
    # rest of their chunk, and its results, alive. One worker: the 16 tasks go in chunks of 4.
    async with Session(backends=[ConcurrentBackend(max_workers=1)]) as session:
        failed = TrackedTask(function=workloads.fail, args=("boom",))
        mates = [TrackedTask(function=workloads.square, args=(i,)) for i in range(15)]
        await session.submit_tasks([failed, *mates])
        await session.wait_tasks([failed, *mates], timeout=NO_HANG)
        refs = [weakref.ref(mate) for mate in mates]
        del mates
        assert await still_alive(refs) == []
        assert failed.exception.__traceback__ is not None  # kept whole, for the program
        with pytest.raises(workloads.KitError, match="boom"):
            await failed


@pytest.mark.parametrize("where", ["threads", "processes"])
async def test_async_function_timeout(where: str, process_pool: ProcessPoolExecutor) -> None:
    backend = ConcurrentBackend(executor=process_pool) if where == "processes" else ConcurrentBackend()
    async with Session(backends=[backend]) as session:
        slow = ComputeTask(function=workloads.async_sleep, args=(30,), timeout=0.3)
        quick = ComputeTask(function=workloads.async_sleep, args=(0.01,), timeout=30)
        [future, _] = await session.submit_tasks([slow, quick])
        with pytest.raises(TimeoutError, match=r"^the task exceeded its timeout of 0.3 s$"):
            await asyncio.wait_for(future, NO_HANG)
        await session.wait_tasks([quick], timeout=NO_HANG)
    assert (slow.state, quick.state, quick.return_value) == ("FAILED", "DONE", 0.01)


async def test_cancel_a_queued_thread_task() -> None:
    gate = threading.Event()
    async with Session(backends=[ConcurrentBackend(max_workers=1)]) as session:
        blocker = ComputeTask(function=gate.wait, args=(NO_HANG,))
        await session.submit_tasks([blocker])
        queued = [ComputeTask(function=workloads.square, args=(i,)) for i in range(3)]
        await session.submit_tasks(queued)
        assert await session.cancel_task(queued[1]) is True
        assert queued[1].state == "CANCELED"
        gate.set()
        await session.wait_tasks([blocker, *queued], timeout=NO_HANG)
    assert [t.state for t in queued] == ["DONE", "CANCELED", "DONE"]
    assert (queued[0].return_value, queued[1].return_value, queued[2].return_value) == (0, None, 4)


@pytest.mark.parametrize(("count", "workers", "size"), [(1, 4, 1), (10, 4, 1), (1000, 2, 125), (10**6, 2, 256)])
def test_chunk_size(count: int, workers: int, size: int) -> None:
    assert _chunk_size(count, workers) == size


async def test_many_tasks_in_chunks_on_threads() -> None:
    backend = ConcurrentBackend(max_workers=2)
    async with Session(backends=[backend]) as session:
        tasks = [ComputeTask(function=workloads.square, args=(i,)) for i in range(3000)]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks, timeout=NO_HANG)
        assert [t.return_value for t in tasks] == [i * i for i in range(3000)]
        assert backend._queued == {}


# -- functions on processes ------------------------------------------------------------------


async def test_lambdas_and_closures_run_in_worker_processes(process_pool: ProcessPoolExecutor) -> None:
    factor = 7

    def closure(x: int) -> int:
        return x * factor

    async with on_processes(process_pool) as session:
        tasks = [ComputeTask(function=lambda x: x + 1, args=(1,)),
                 ComputeTask(function=closure, args=(6,)),
                 ComputeTask(function=pid)]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks, timeout=NO_HANG)
    assert [t.state for t in tasks] == ["DONE"] * 3, [t.exception for t in tasks]
    assert (tasks[0].return_value, tasks[1].return_value) == (2, 42)
    assert tasks[2].return_value != os.getpid()


async def test_unpicklable_return_value_fails_only_its_task(process_pool: ProcessPoolExecutor) -> None:
    async with on_processes(process_pool) as session:
        tasks = [ComputeTask(function=workloads.square, args=(i,)) for i in range(16)]
        tasks[5] = ComputeTask(function=make_lock)  # shares a chunk of 2 with tasks[4]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks, timeout=NO_HANG)
    assert [t.state for i, t in enumerate(tasks) if i != 5] == ["DONE"] * 15
    assert tasks[4].return_value == 16
    assert tasks[5].state == "FAILED"
    assert isinstance(tasks[5].exception, RuntimeError)
    assert "result <unlocked _thread.lock object" in str(tasks[5].exception)
    assert "cannot be pickled back from the worker process" in str(tasks[5].exception)


async def test_unpicklable_argument_refuses_the_call_before_anything_runs(
    process_pool: ProcessPoolExecutor, tmp_path: pathlib.Path
) -> None:
    marker = tmp_path / "ran"
    async with on_processes(process_pool) as session:
        fine = [ComputeTask(function=touch, args=(str(marker),)) for _ in range(20)]
        exe = ComputeTask(executable="/bin/touch", arguments=[str(marker)])
        bad = ComputeTask(function=workloads.add, args=(threading.Lock(), 1))
        with pytest.raises(TypeError, match=rf"task {bad.uid}: its function or arguments cannot be "
                                            r"pickled for the process pool: TypeError: cannot pickle "
                                            r"'_thread.lock' object"):
            await session.submit_tasks([*fine, exe, bad])
        assert session.in_flight == 0
        await asyncio.sleep(0.5)
        assert not marker.exists(), "a task of a refused call ran"
        assert all(t.state == "NEW" for t in [*fine, exe, bad])


async def test_sys_exit_in_a_process_task_fails_only_that_task(process_pool: ProcessPoolExecutor) -> None:
    async with on_processes(process_pool) as session:
        tasks = [ComputeTask(function=exit_with, args=(4,)), ComputeTask(function=workloads.add, args=(2, 2))]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks, timeout=NO_HANG)
    assert [t.state for t in tasks] == ["FAILED", "DONE"]
    assert isinstance(tasks[0].exception, SystemExit) and tasks[0].exception.code == 4
    assert tasks[1].return_value == 4


async def test_exception_type_survives_the_process_boundary(process_pool: ProcessPoolExecutor) -> None:
    async with on_processes(process_pool) as session:
        task = ComputeTask(function=workloads.fail, args=("far away",))
        [future] = await session.submit_tasks([task])
        with pytest.raises(workloads.KitError, match=r"^far away$"):
            await future


async def test_cancel_a_queued_process_task_resubmits_the_rest_of_its_chunk(
    tmp_path: pathlib.Path, lone_worker_pool: ProcessPoolExecutor
) -> None:
    marker = tmp_path / "cancelled-task-ran"
    async with on_processes(lone_worker_pool) as session:
        blocker = ComputeTask(function=workloads.sleep, args=(1.0,))
        await session.submit_tasks([blocker])
        # 16 tasks on 1 worker: chunks of 4; the last chunk stays queued behind the blocker.
        tasks = [ComputeTask(function=workloads.square, args=(i,)) for i in range(16)]
        tasks[13] = ComputeTask(function=touch, args=(str(marker),))
        await session.submit_tasks(tasks)
        assert await session.cancel_task(tasks[13]) is True
        assert tasks[13].state == "CANCELED" and tasks[13].future.cancelled()
        await session.wait_tasks([blocker, *tasks], timeout=NO_HANG)
        assert session.in_flight == 0
        assert session.backends["concurrent"]._queued == {}
    assert [t.state for i, t in enumerate(tasks) if i != 13] == ["DONE"] * 15
    assert [t.return_value for i, t in enumerate(tasks) if i != 13] == [i * i for i in range(16) if i != 13]
    assert not marker.exists()


async def test_cancel_a_running_process_chunk_is_refused(lone_worker_pool: ProcessPoolExecutor) -> None:
    async with on_processes(lone_worker_pool) as session:
        task = ComputeTask(function=workloads.sleep, args=(0.5,))
        await session.submit_tasks([task])
        await asyncio.sleep(0.2)  # the pool has taken the only chunk into its call queue
        assert await session.cancel_task(task) is False
        await session.wait_tasks([task], timeout=NO_HANG)
    assert (task.state, task.return_value) == ("DONE", 0.5)


async def test_many_tasks_in_chunks_on_processes(process_pool: ProcessPoolExecutor) -> None:
    async with on_processes(process_pool) as session:
        tasks = [ComputeTask(function=workloads.square, args=(i,)) for i in range(2000)]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks, timeout=NO_HANG)
        assert [t.return_value for t in tasks] == [i * i for i in range(2000)]
        assert session.backends["concurrent"]._queued == {}


async def test_a_dead_worker_fails_its_task_and_loses_none(lone_worker_pool: ProcessPoolExecutor) -> None:
    async with on_processes(lone_worker_pool) as session:
        tasks = [ComputeTask(function=die_hard, retries=0), ComputeTask(function=workloads.add, args=(1, 1))]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks, timeout=NO_HANG)
        assert tasks[0].state == "FAILED"
        assert isinstance(tasks[0].exception, WorkerLostError)
        assert (tasks[1].state, tasks[1].return_value) == ("DONE", 2)
        assert session.in_flight == 0


async def test_a_pool_already_broken_is_rebuilt_for_new_tasks(lone_worker_pool: ProcessPoolExecutor) -> None:
    # The race CI once hit: the worker died before the second chunk reached the pool, and
    # ProcessPoolExecutor.submit raised out of submit_tasks. Here the pool is broken on purpose first.
    async with on_processes(lone_worker_pool) as session:
        first = ComputeTask(function=die_hard, retries=0)
        await session.submit_tasks([first])
        await session.wait_tasks([first], timeout=NO_HANG)
        later = [ComputeTask(function=workloads.add, args=(i, i)) for i in range(3)]
        await session.submit_tasks(later)
        await session.wait_tasks(later, timeout=NO_HANG)
        assert [t.return_value for t in later] == [0, 2, 4]
        assert session.backends["concurrent"].executor is not lone_worker_pool
        assert session.in_flight == 0
        assert session.backends["concurrent"]._queued == {}


async def test_a_thread_pool_shut_down_by_its_owner_fails_new_tasks() -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    async with Session(backends=[ConcurrentBackend(executor=pool)]) as session:
        pool.shutdown(wait=True)
        task = ComputeTask(function=workloads.add, args=(1, 2))
        await session.submit_tasks([task])
        await session.wait_tasks([task], timeout=NO_HANG)
        assert task.state == "FAILED"
        assert "shutdown" in str(task.exception)
        assert session.in_flight == 0
