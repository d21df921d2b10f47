"""Re-runs by the session through the Dask backend, and tasks a worker cannot load.

A re-run reaches Dask under a fresh key (the failed attempt's key would hand back its failed
future). A function or argument that a worker cannot unpickle fails its own task with
``TaskLoadError``; it used to break the worker's connection, close the worker and its nanny for
good, and leave every later task waiting forever.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
import types
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from rhapsody import ComputeTask, Session
from rhapsody_dask import DaskBackend, TaskLoadError


def raise_first_time(marker: str) -> str:
    with open(marker, "a") as log:
        log.write("attempt\n")
    if len(pathlib.Path(marker).read_text().splitlines()) == 1:
        raise ValueError("first attempt fails")
    return "second attempt"


def always_raise(marker: str) -> None:
    with open(marker, "a") as log:
        log.write("attempt\n")
    raise ValueError("always")


def square(x: int) -> int:
    return x * x


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 180))


@pytest.fixture
def client_only_module() -> Iterator[types.ModuleType]:
    """A module that exists only in this process's sys.modules, as a script run by path does.

    Its functions and classes pickle by reference (it has a ``__file__``), and the workers,
    separate processes, cannot import it.
    """
    name = f"rhapsody_client_only_{uuid.uuid4().hex[:8]}"
    module = types.ModuleType(name)
    module.__file__ = f"/nonexistent/{name}.py"
    exec("def work(x):\n    return x + 1\n\nclass Point:\n    pass\n", module.__dict__)
    sys.modules[name] = module
    try:
        yield module
    finally:
        del sys.modules[name]


def test_a_task_re_run_on_its_exception_gets_a_fresh_dask_key(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "attempts"

    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=1)]) as session:
            task = ComputeTask(function=raise_first_time, args=(str(marker),), retries=1,
                               retry_exceptions=(ValueError,))
            [future] = await session.submit_tasks([task])
            assert await future is task
            assert (task.state, task.return_value, task.retried) == ("DONE", "second attempt", 1)
            assert len(marker.read_text().splitlines()) == 2

    run(body())


def test_deprecated_retries_key_is_the_sessions_one_count(tmp_path: pathlib.Path) -> None:
    once, always = tmp_path / "once", tmp_path / "always"

    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=1)]) as session:
            recovers = ComputeTask(function=raise_first_time, args=(str(once),),
                                   task_backend_specific_kwargs={"retries": 1})
            fails = ComputeTask(function=always_raise, args=(str(always),),
                                task_backend_specific_kwargs={"retries": 2})
            with pytest.warns(DeprecationWarning, match=r"ComputeTask\(retries=\d, retry_exceptions=True\)"):
                await session.submit_tasks([recovers, fails])
            await session.wait_tasks([recovers, fails])
            assert (recovers.state, recovers.retried, recovers.retries) == ("DONE", 1, 1)
            assert recovers.retry_exceptions is True
            assert (fails.state, fails.retried) == ("FAILED", 2)
            assert isinstance(fails.exception, ValueError)
            # One count: the first run and 2 re-runs, not Dask's retries on top of the session's.
            assert len(always.read_text().splitlines()) == 3

    run(body())


def test_deprecated_retries_key_conflicting_with_the_task_is_refused() -> None:
    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=1)]) as session:
            good = ComputeTask(function=square, args=(3,))
            bad = ComputeTask(function=square, args=(4,), retries=5,
                              task_backend_specific_kwargs={"retries": 1})
            with pytest.raises(ValueError, match=r"retries=1 \(deprecated\) conflicts"):
                await session.submit_tasks([good, bad])
            assert good.state == bad.state == "NEW" and session.in_flight == 0

    run(body())


def test_a_function_the_workers_cannot_import_fails_alone(client_only_module: Any) -> None:
    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=2)]) as session:
            bad = [ComputeTask(function=client_only_module.work, args=(i,)) for i in range(3)]
            good = [ComputeTask(function=square, args=(i,)) for i in range(40)]
            await session.submit_tasks([*bad[:2], *good, bad[2]])
            await session.wait_tasks([*bad, *good])
            for task in bad:
                assert (task.state, task.retried) == ("FAILED", 0)
                assert isinstance(task.exception, TaskLoadError)
                assert task.exception.part == "function"
                assert f"No module named '{client_only_module.__name__}'" in str(task.exception)
            assert [t.return_value for t in good] == [i * i for i in range(40)]
            # The workers are still there: later tasks run.
            later = [ComputeTask(function=square, args=(i,)) for i in range(5)]
            await session.submit_tasks(later)
            await session.wait_tasks(later)
            assert [t.return_value for t in later] == [i * i for i in range(5)]

    run(body())


def test_an_argument_the_workers_cannot_load_fails_alone(client_only_module: Any) -> None:
    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=1)]) as session:
            bad = ComputeTask(function=square, kwargs={"x": client_only_module.Point()})
            good = [ComputeTask(function=square, args=(i,)) for i in range(5)]
            await session.submit_tasks([bad, *good])
            await session.wait_tasks([bad, *good])
            assert bad.state == "FAILED" and isinstance(bad.exception, TaskLoadError)
            assert bad.exception.part == "arguments"
            assert [t.return_value for t in good] == [i * i for i in range(5)]

    run(body())


def test_own_cluster_left_without_workers_fails_waiting_tasks(client_only_module: Any) -> None:
    async def body() -> None:
        backend = DaskBackend(n_workers=2, unsatisfiable_timeout=1)
        async with Session(backends=[backend]) as session:
            client = backend.client
            loop = asyncio.get_running_loop()
            # The original failure, through Dask directly: a function pickled by reference that
            # the workers cannot import breaks their connection, and they close with their nanny.
            raw = client.map(client_only_module.work, range(4), pure=False)
            while (await loop.run_in_executor(None, client.scheduler_info))["workers"]:
                await asyncio.sleep(0.1)
            del raw
            stranded = [ComputeTask(function=square, args=(i,)) for i in range(5)]
            await session.submit_tasks(stranded)
            await session.wait_tasks(stranded)  # bounded by run(): used to wait forever
            for task in stranded:
                assert task.state == "FAILED"
                assert "has had no worker" in str(task.exception)

    run(body())
