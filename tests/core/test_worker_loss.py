"""One failure stays one failure: dead pool workers, retries, and a session used from another loop.

Every pool here is real and every worker really dies (``os._exit`` or SIGKILL from inside a task).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import psutil
import pytest

from rhapsody import ComputeTask, Session, TaskExecutionError, WorkerLostError, get_backend
from rhapsody.builtin.concurrent import ConcurrentBackend

NO_HANG = 120.0  # bounds that only prove "no hang"; nothing here measures speed


def square_or_die(value: int, doomed: int, how: str) -> int:
    if value == doomed:
        if how == "signal":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    return value * value


def die_on_first_attempts(log: str, deaths: int) -> int:
    """Append this process's pid to ``log``; end the process while the log has ``deaths`` or fewer lines."""
    with open(log, "a") as file:
        file.write(f"{os.getpid()}\n")
    if len(pathlib.Path(log).read_text().splitlines()) <= deaths:
        os._exit(7)
    return os.getpid()


def raise_on_first_attempt(log: str, error: type[BaseException]) -> str:
    with open(log, "a") as file:
        file.write("run\n")
    if len(pathlib.Path(log).read_text().splitlines()) == 1:
        raise error("first attempt")
    return "second attempt"


def fail_to_start() -> None:
    raise RuntimeError("this initializer always fails")


@pytest.fixture
def pool() -> Iterator[ProcessPoolExecutor]:
    pool = ProcessPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("how, code", [("exit", 3), ("signal", -signal.SIGKILL)])
async def test_a_dead_worker_takes_only_its_own_task(pool: ProcessPoolExecutor, how: str, code: int) -> None:
    async with Session(backends=[ConcurrentBackend(executor=pool)]) as session:
        tasks = [ComputeTask(function=square_or_die, args=(i, 150, how), retries=0) for i in range(400)]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks, timeout=NO_HANG)
        doomed = tasks[150]
        assert doomed.state == "FAILED"
        error = doomed.exception
        assert isinstance(error, WorkerLostError)
        assert (error.uid, error.exit_code) == (doomed.uid, code)
        assert error.worker is not None and error.worker.startswith("process ")
        assert ("SIGKILL" in str(error)) == (how == "signal")
        with pytest.raises(WorkerLostError):
            await doomed
        healthy = tasks[:150] + tasks[151:]
        assert [t.state for t in healthy] == ["DONE"] * 399
        assert [t.return_value for t in healthy] == [i * i for i in range(400) if i != 150]
        # The broken pool was replaced, and later submissions run on the new one.
        backend = session.backends["concurrent"]
        assert backend.executor is not pool
        later = [ComputeTask(function=square_or_die, args=(i, -1, how)) for i in range(10)]
        await session.submit_tasks(later)
        await session.wait_tasks(later, timeout=NO_HANG)
        assert [t.return_value for t in later] == [i * i for i in range(10)]
        assert session.in_flight == 0
        assert backend._queued == {}


async def test_a_lost_worker_is_retried_by_default(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "attempts"
    async with Session(backends=[get_backend("concurrent", processes=2)]) as session:
        task = ComputeTask(function=die_on_first_attempts, args=(str(log), 1))
        others = [ComputeTask(function=abs, args=(-i,)) for i in range(50)]
        await session.submit_tasks([task, *others])
        await session.wait_tasks([task, *others], timeout=NO_HANG)
    assert task.state == "DONE", task.exception
    assert task.retried == 1
    pids = [int(line) for line in log.read_text().split()]
    assert len(pids) == 2 and task.return_value == pids[1] != pids[0]
    assert [t.return_value for t in others] == list(range(50))


async def test_a_task_that_always_kills_its_worker_fails_after_its_retries(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "attempts"
    before = set(psutil.Process().children())  # other tests' processes are not this one's business
    async with Session(backends=[get_backend("concurrent", processes=2)]) as session:
        task = ComputeTask(function=die_on_first_attempts, args=(str(log), 99), retries=2)
        others = [ComputeTask(function=abs, args=(-i,)) for i in range(200)]
        await session.submit_tasks([task, *others])
        await session.wait_tasks([task, *others], timeout=NO_HANG)
        assert task.state == "FAILED"
        assert isinstance(task.exception, WorkerLostError) and task.exception.exit_code == 7
        assert task.retried == 2
        assert len(log.read_text().split()) == 3  # the first run and two retries
        assert [t.state for t in others] == ["DONE"] * 200
        workers = set(psutil.Process().children()) - before
    # The backend owned every pool it built: none of their workers outlives the session.
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == []


async def test_own_exceptions_are_retried_only_on_request(tmp_path: pathlib.Path) -> None:
    async with Session() as session:
        asked = ComputeTask(function=raise_on_first_attempt, args=(str(tmp_path / "a"), ValueError),
                            retry_exceptions=True)
        listed = ComputeTask(function=raise_on_first_attempt, args=(str(tmp_path / "b"), KeyError),
                             retry_exceptions=(KeyError,))
        unlisted = ComputeTask(function=raise_on_first_attempt, args=(str(tmp_path / "c"), ValueError),
                               retry_exceptions=(KeyError,))
        default = ComputeTask(function=raise_on_first_attempt, args=(str(tmp_path / "d"), ValueError))
        tasks = [asked, listed, unlisted, default]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks, timeout=NO_HANG)
    assert [(t.state, t.retried) for t in tasks] == [("DONE", 1), ("DONE", 1), ("FAILED", 0), ("FAILED", 0)]
    assert asked.return_value == "second attempt"
    assert isinstance(unlisted.exception, ValueError) and isinstance(default.exception, ValueError)


async def test_a_failing_executable_is_retried_on_request(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran-once"
    script = f'if [ -e {marker} ]; then echo again; else touch {marker}; exit 3; fi'
    async with Session() as session:
        task = ComputeTask(executable="sh", arguments=["-c", script], retry_exceptions=True, retries=1)
        never = ComputeTask(executable="sh", arguments=["-c", "exit 4"], retry_exceptions=True, retries=0)
        await session.submit_tasks([task, never])
        await session.wait_tasks([task, never], timeout=NO_HANG)
    assert (task.state, task.retried, task.stdout, task.exit_code) == ("DONE", 1, "again\n", 0)
    assert never.state == "FAILED" and isinstance(never.exception, TaskExecutionError)


async def test_a_pool_that_cannot_start_fails_its_tasks_instead_of_looping() -> None:
    pool = ProcessPoolExecutor(max_workers=1, initializer=fail_to_start)
    try:
        async with Session(backends=[ConcurrentBackend(executor=pool)]) as session:
            tasks = [ComputeTask(function=abs, args=(-i,)) for i in range(5)]
            await session.submit_tasks(tasks)
            await session.wait_tasks(tasks, timeout=NO_HANG)
        assert {t.state for t in tasks} == {"FAILED"}
        assert all(isinstance(t.exception, BrokenProcessPool) for t in tasks)
        assert "broke 4 times in a row" in str(tasks[0].exception)
    finally:
        pool.shutdown(wait=True)


async def test_cancel_stops_a_task_waiting_for_its_retry(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "attempts"
    async with Session(backends=[get_backend("concurrent", processes=1)]) as session:
        blocker = ComputeTask(function=die_on_first_attempts, args=(str(log), 99))
        await session.submit_tasks([blocker])
        # Each death puts the task back in the queue; a cancel at any point ends it CANCELED.
        while not log.exists():
            await asyncio.sleep(0.01)
        assert await session.cancel_task(blocker) in (True, False)
        await session.wait_tasks([blocker], timeout=NO_HANG)
    assert blocker.state in ("CANCELED", "FAILED")
    assert blocker.retried <= 3


def test_processes_option_is_checked() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="processes must be an integer >= 1"):
            ConcurrentBackend(processes=bad)
    with pytest.raises(ValueError, match="cannot be combined"):
        ConcurrentBackend(processes=2, max_workers=2)


def test_retry_fields_are_checked() -> None:
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="retries must be an integer >= 0"):
            ComputeTask(function=abs, args=(1,), retries=bad)
    for bad in ((), (ValueError, 3), "ValueError", [KeyError]):
        with pytest.raises(TypeError, match="retry_exceptions must be"):
            ComputeTask(function=abs, args=(1,), retry_exceptions=bad)
    task = ComputeTask(function=abs, args=(1,))
    assert (task.retries, task.retry_exceptions, task.retried) == (3, False, 0)
    assert "retries" not in task.keys()  # defaults are not stored


def test_a_session_refuses_a_second_event_loop_at_once() -> None:
    session = Session()
    task = ComputeTask(function=abs, args=(-1,))

    async def first() -> None:
        await session.submit_tasks([task])
        await session.wait_tasks([task], timeout=NO_HANG)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(first())
        # Another thread with its own loop, while the session's loop still exists.
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                asyncio.run(session.submit_tasks([ComputeTask(function=abs, args=(-2,))]))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(NO_HANG)
        assert not thread.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
        assert "still running" in str(errors[0]) or "another event loop" in str(errors[0])
    finally:
        loop.close()
    # After the session's own loop has closed.
    late = ComputeTask(function=abs, args=(-3,))
    with pytest.raises(RuntimeError, match="has been closed.*another event loop"):
        asyncio.run(session.submit_tasks([late]))
    assert late.state == "NEW"
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(session.wait_tasks([task]))
    assert task.state == "DONE" and task.return_value == 1


def _pool_thread_that_dies(self: object, cause: object) -> None:
    # Stands for CPython's pool thread dying inside terminate_broken (a submit racing its walk of
    # the futures: "dictionary changed size during iteration") before it failed any future.
    executor = self.executor_reference()  # type: ignore[attr-defined]
    if executor is not None:
        executor._broken = "a worker died"
    raise RuntimeError("dictionary changed size during iteration")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_futures_a_dead_pool_thread_left_pending_are_recovered(
        pool: ProcessPoolExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    import concurrent.futures.process as stdlib_pool

    monkeypatch.setattr(stdlib_pool._ExecutorManagerThread, "terminate_broken", _pool_thread_that_dies)
    async with Session(backends=[ConcurrentBackend(executor=pool)]) as session:
        tasks = [ComputeTask(function=square_or_die, args=(i, 40, "exit"), retries=0) for i in range(120)]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks, timeout=NO_HANG)
        assert tasks[40].state == "FAILED" and isinstance(tasks[40].exception, WorkerLostError)
        healthy = tasks[:40] + tasks[41:]
        assert [t.return_value for t in healthy] == [i * i for i in range(120) if i != 40]
        assert session.backends["concurrent"]._queued == {}


class _AsyncCallable:
    async def __call__(self, value: int) -> int:
        await asyncio.sleep(0)
        return value + 1


def test_is_async_callable_sees_functions_partials_and_async_call() -> None:
    import functools

    from rhapsody.backend import is_async_callable

    async def coroutine_function() -> None:
        pass

    assert is_async_callable(coroutine_function)
    assert is_async_callable(functools.partial(coroutine_function))
    assert is_async_callable(_AsyncCallable())
    assert not is_async_callable(abs) and not is_async_callable(functools.partial(abs, 1))


async def test_an_object_with_async_call_takes_a_timeout_on_concurrent() -> None:
    async with Session() as session:
        task = ComputeTask(function=_AsyncCallable(), args=(1,), timeout=30)
        await session.submit_tasks([task])
        assert (await task).return_value == 2
