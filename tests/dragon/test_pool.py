"""The worker pool (``function_mode="pool"``, the default), on a real Dragon runtime (one pool for the module)."""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import pathlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dragon_support import Harness, harness, runtime_missing, spinner

from rhapsody import ComputeTask, WorkerLostError
from rhapsody.testing import workloads
from rhapsody_dragon.pool import CHUNKS_PER_WORKER

pytestmark = pytest.mark.skipif(bool(runtime_missing()), reason=runtime_missing() or "-")

WORKERS = 2


@pytest.fixture(scope="module")
def dragon() -> Iterator[Harness]:
    yield from harness(workers_per_node=WORKERS)


def _chunks_sent(pool: Any) -> tuple[list[int], Any]:
    """Record the size of every chunk the pool sends (wraps its _send)."""
    sizes: list[int] = []
    send = pool._send

    def recording(outgoing: list[tuple[int, list[int], list[Any], list[Any]]]) -> None:
        sizes.extend(len(tids) for _, tids, _, _ in outgoing)
        send(outgoing)

    pool._send = recording
    return sizes, send


def _idle(pool: Any) -> bool:
    return not (pool._tasks or pool._backlog or pool._chunks or pool._chunk_of or pool._solo)


def test_pool_starts_with_the_backend_and_the_batch_waits_for_an_executable(dragon: Harness) -> None:
    pool = dragon.backend._pool
    assert pool is not None and pool.workers == WORKERS
    assert len(pool._slots) == WORKERS
    assert dragon.backend._batch is None, "no executable has come yet: the Batch must not be running"


def test_a_lone_task_goes_out_alone_and_a_burst_in_chunks(dragon: Harness) -> None:
    pool = dragon.backend._pool
    sizes, send = _chunks_sent(pool)
    try:
        lone = ComputeTask(function=workloads.add, args=(1, 2))
        dragon.submit_and_wait([lone])
        assert lone.return_value == 3
        assert sizes == [1], "a task on an idle pool must be sent at once, alone"
        sizes.clear()
        burst = [ComputeTask(function=workloads.square, args=(i,)) for i in range(3000)]
        dragon.submit_and_wait(burst)
        assert [t.return_value for t in burst] == [i * i for i in range(3000)]
        assert sum(sizes) == 3000
        # 3000 tasks over CHUNKS_PER_WORKER * WORKERS chunks out at a time, then refills.
        assert max(sizes) == math.ceil(3000 / (CHUNKS_PER_WORKER * WORKERS)) and len(sizes) < 3000 / 50, sizes
    finally:
        pool._send = send
    assert _idle(pool)


def test_ten_thousand_tasks_none_lost(dragon: Harness) -> None:
    count = 10_000
    tasks = [ComputeTask(function=workloads.square, args=(i,)) for i in range(count)]
    dragon.submit_and_wait(tasks, timeout=300)
    assert [t.state for t in tasks] == ["DONE"] * count
    assert [t.return_value for t in tasks] == [i * i for i in range(count)]
    assert dragon.session.in_flight == 0
    assert _idle(dragon.backend._pool)


def test_a_quick_task_is_not_held_back_by_a_slow_one_in_its_chunk(dragon: Harness) -> None:
    tasks = [ComputeTask(function=workloads.square, args=(i,)) for i in range(16)]
    slow = ComputeTask(function=spinner(6.0))
    tasks.insert(1, slow)  # 17 tasks: the first chunk cut holds tasks[0], the slow one and one more
    quick = tasks[0]

    async def body() -> None:
        sizes, send = _chunks_sent(dragon.backend._pool)
        try:
            await dragon.session.submit_tasks(tasks)
        finally:
            dragon.backend._pool._send = send
        assert sizes[0] > 2, sizes
        # The worker sends what its chunk has done so far while the slow task still runs.
        await dragon.session.wait_tasks([quick], timeout=4.0)
        assert quick.return_value == 0
        assert slow.state not in ("DONE", "FAILED", "CANCELED")
        await dragon.session.wait_tasks(tasks, timeout=60.0)

    dragon.run(body(), 90.0)
    assert [t.return_value for t in tasks if t is not slow] == [i * i for i in range(16)]


def test_own_exception_and_timeout_reach_the_future_and_the_worker_goes_on(dragon: Harness) -> None:
    failing = ComputeTask(function=workloads.fail, args=("pool says no",))
    slow = ComputeTask(function=workloads.sleep, args=(60,), timeout=1)
    slow_async = ComputeTask(function=workloads.async_sleep, args=(60,), timeout=1)
    started = time.monotonic()
    dragon.submit_and_wait([failing, slow, slow_async], timeout=60)
    assert time.monotonic() - started < 30
    assert failing.state == "FAILED" and isinstance(failing.exception, workloads.KitError)
    for task in (slow, slow_async):
        assert task.state == "FAILED"
        assert isinstance(task.exception, TimeoutError) and "timeout of 1" in str(task.exception)
    after = [ComputeTask(function=workloads.add, args=(i, i)) for i in range(4)]
    dragon.submit_and_wait(after)
    assert [t.return_value for t in after] == [0, 2, 4, 6]


def test_unpicklable_call_fails_alone_with_why(dragon: Harness) -> None:
    bad = ComputeTask(function=workloads.add, args=(threading.Lock(), 1))
    good = ComputeTask(function=workloads.add, args=(1, 1))
    dragon.submit_and_wait([bad, good])
    assert bad.state == "FAILED" and isinstance(bad.exception, TypeError)
    assert "cannot be pickled" in str(bad.exception)
    assert good.return_value == 2


def _function_only_here(name: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``twice`` from a module only this process can import: cloudpickle ships it by reference,
    and the workers (whose sys.path lacks tmp_path) cannot load it."""
    (tmp_path / f"{name}.py").write_text("def twice(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name).twice


def _send_and_record(dragon: Harness, tasks: list[ComputeTask]) -> list[int]:
    """Submit ``tasks`` and wait for them; returns the sizes of the chunks the pool sent meanwhile."""
    pool = dragon.backend._pool
    sizes, send = _chunks_sent(pool)
    try:
        dragon.submit_and_wait(tasks)
    finally:
        pool._send = send
    return sizes


def test_a_task_workers_cannot_unpickle_fails_alone(dragon: Harness, tmp_path: pathlib.Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    twice = _function_only_here("rhapsody_only_here", tmp_path, monkeypatch)
    # Enough tasks for chunks of several: the bad one shares its chunk with good ones.
    tasks = [ComputeTask(function=workloads.square, args=(i,)) for i in range(40)]
    bad = ComputeTask(function=twice, args=(1,))
    tasks.insert(5, bad)
    sizes = _send_and_record(dragon, tasks)
    pool = dragon.backend._pool
    assert max(sizes) > 1
    assert bad.state == "FAILED" and "could not unpickle" in str(bad.exception), bad.exception
    assert "rhapsody_only_here" in str(bad.exception)
    good = [t for t in tasks if t is not bad]
    assert [t.return_value for t in good] == [i * i for i in range(40)]
    assert _idle(pool)


def test_a_workload_whose_function_workers_cannot_import_fails_chunk_by_chunk(
        dragon: Harness, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    twice = _function_only_here("rhapsody_also_only_here", tmp_path, monkeypatch)
    tasks = [ComputeTask(function=twice, args=(i,)) for i in range(500)]
    sizes = _send_and_record(dragon, tasks)
    pool = dragon.backend._pool
    assert {t.state for t in tasks} == {"FAILED"}
    assert all("could not unpickle the task's function" in str(t.exception) for t in tasks)
    assert "rhapsody_also_only_here" in str(tasks[0].exception)
    # Each chunk failed whole: every task was sent once, none again on its own.
    assert sum(sizes) == 500 and max(sizes) > 1, sizes
    assert _idle(pool)
    later = ComputeTask(function=workloads.square, args=(3,))
    dragon.submit_and_wait([later])
    assert later.return_value == 9


def test_a_dead_worker_fails_only_its_task_is_replaced_and_the_pool_goes_on(dragon: Harness) -> None:
    pool = dragon.backend._pool
    before = {slot: state.pid for slot, state in pool._slots.items()}
    # One submit: the doomed task shares chunks with healthy ones.
    doomed = ComputeTask(function=workloads.end_own_process, args=(13,), retries=0)
    healthy = [ComputeTask(function=workloads.add, args=(i, 1)) for i in range(40)]
    dragon.submit_and_wait([*healthy[:20], doomed, *healthy[20:]], timeout=120)
    assert doomed.state == "FAILED"
    assert isinstance(doomed.exception, WorkerLostError) and doomed.exception.uid == doomed.uid
    assert "Dragon pool worker process" in str(doomed.exception)
    assert [t.return_value for t in healthy] == [i + 1 for i in range(40)]
    # One slot has a new process; the pool still has all its workers and runs new work.
    after = {slot: state.pid for slot, state in pool._slots.items()}
    assert len(after) == WORKERS
    assert sum(before[slot] != after[slot] for slot in after) == 1
    later = [ComputeTask(function=workloads.square, args=(i,)) for i in range(200)]
    dragon.submit_and_wait(later)
    assert [t.return_value for t in later] == [i * i for i in range(200)]
    assert _idle(pool)


def test_a_lost_task_is_retried_on_a_new_worker(dragon: Harness, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "died-once"
    task = ComputeTask(function=workloads.end_own_process_once, args=(str(marker), 13))
    dragon.submit_and_wait([task])
    assert marker.exists()
    assert (task.state, task.return_value, task.retried) == ("DONE", "survived", 1), task.exception


def test_cancel_of_queued_work_never_runs_it(dragon: Harness, tmp_path: pathlib.Path) -> None:
    pool = dragon.backend._pool
    markers = [tmp_path / f"late-{i}" for i in range(5)]

    def touch(path: str) -> None:
        pathlib.Path(path).touch()

    async def body() -> list[ComputeTask]:
        # One blocker per submit: each is a chunk of its own, until every chunk the pool lets
        # out is taken; the late tasks then wait in the pool's backlog.
        blockers = []
        for _ in range(CHUNKS_PER_WORKER * WORKERS):
            blocker = ComputeTask(function=workloads.sleep, args=(2,))
            await dragon.session.submit_tasks([blocker])
            blockers.append(blocker)
        late = [ComputeTask(function=touch, args=(str(path),)) for path in markers]
        await dragon.session.submit_tasks(late)
        assert len(pool._backlog) == len(late)
        for task in late:
            assert await dragon.session.cancel_task(task) is True
            assert task.state == "CANCELED"
        await dragon.session.wait_tasks(blockers, timeout=60)
        return blockers

    blockers = dragon.run(body())
    assert [t.state for t in blockers] == ["DONE"] * len(blockers)
    dragon.submit_and_wait([ComputeTask(function=workloads.add, args=(1, 1))])  # the pool drained
    assert not any(path.exists() for path in markers), "a cancelled queued task ran"
    assert _idle(pool)


def test_cancel_of_a_running_function_stops_it(dragon: Harness) -> None:
    pool = dragon.backend._pool
    task = ComputeTask(function=spinner(120))

    async def body() -> bool:
        await dragon.session.submit_tasks([task])
        await asyncio.sleep(1.5)
        return await dragon.session.cancel_task(task)

    before = {slot: state.pid for slot, state in pool._slots.items()}
    started = time.monotonic()
    assert dragon.run(body()) is True
    assert task.state == "CANCELED"
    # Its worker was killed and replaced; the pool runs new work, and nothing waits 120 s.
    later = ComputeTask(function=workloads.add, args=(2, 3))
    dragon.submit_and_wait([later])
    assert later.return_value == 5
    assert time.monotonic() - started < 60
    # The killed worker's replacement says hello when Dragon has started it.
    dragon.run(_until_replaced(pool, before), timeout=60)
    assert _idle(pool)


async def _until_replaced(pool: Any, before: dict[int, int]) -> None:
    while sum(before[slot] != state.pid for slot, state in pool._slots.items()) != 1:
        await asyncio.sleep(0.05)
    assert len(pool._slots) == WORKERS


def test_fence_covers_the_pool(dragon: Harness) -> None:
    tasks = [ComputeTask(function=workloads.sleep, args=(0.3,)) for _ in range(6)]

    async def body() -> None:
        await dragon.session.submit_tasks(tasks)
        await dragon.backend.fence(timeout=60)
        # Every task ran: the pool holds none of them (their reports may still be on the way).
        assert not any(dragon.backend._pool.holds(task) for task in tasks)
        await dragon.session.wait_tasks(tasks, timeout=5)

    dragon.run(body())
    assert [t.state for t in tasks] == ["DONE"] * 6


def test_functions_and_executables_in_one_session(dragon: Harness, tmp_path: pathlib.Path) -> None:
    # Last but one: the first executable starts the Batch beside the pool.
    tasks: list[ComputeTask] = []
    for i in range(3):
        tasks.append(ComputeTask(function=workloads.square, args=(i,)))
        tasks.append(ComputeTask(executable="/bin/sh", arguments=["-c", f"echo {i}"]))
        tasks.append(ComputeTask(function=workloads.async_add, args=(i, 10)))
    dragon.submit_and_wait(tasks, timeout=180)
    assert [t.state for t in tasks] == ["DONE"] * 9, [t.exception for t in tasks]
    for i in range(3):
        square, program, added = tasks[3 * i: 3 * i + 3]
        assert (square.return_value, program.stdout.strip(), added.return_value) == (i * i, str(i), i + 10)
    assert dragon.backend._batch is not None
    more = [ComputeTask(function=workloads.square, args=(i,)) for i in range(500)]
    dragon.submit_and_wait(more)
    assert [t.return_value for t in more] == [i * i for i in range(500)]


def test_a_worker_dragon_does_not_replace_fails_its_task_after_a_grace(dragon: Harness) -> None:
    # Next to last: from here on Dragon restarts no worker of the module's pool.
    from rhapsody_dragon.pool import REPLACEMENT_GRACE_S
    from rhapsody_dragon.worker import progress_path, read_progress

    pool = dragon.backend._pool
    pool._group.stop_restart()
    doomed = ComputeTask(function=spinner(120), retries=0)

    async def body() -> int:
        await dragon.session.submit_tasks([doomed])
        while True:  # bounded by dragon.run's timeout
            for slot_id in list(pool._slots):
                _chunk, position, pid = read_progress(progress_path(pool._progress_dir, slot_id))
                if position:
                    return pid
            await asyncio.sleep(0.05)

    os.kill(dragon.run(body(), timeout=60), signal.SIGKILL)
    started = time.monotonic()
    others = [ComputeTask(function=workloads.add, args=(i, 1)) for i in range(20)]
    dragon.submit_and_wait(others, timeout=60)
    dragon.run(dragon.session.wait_tasks([doomed], timeout=60), timeout=70)
    assert REPLACEMENT_GRACE_S <= time.monotonic() - started < REPLACEMENT_GRACE_S + 30
    assert doomed.state == "FAILED" and isinstance(doomed.exception, WorkerLostError), doomed.exception
    assert [t.return_value for t in others] == [i + 1 for i in range(20)]
    assert len(pool._slots) == WORKERS - 1
    assert _idle(pool)


def test_close_stops_running_functions_and_removes_the_progress_files(dragon: Harness) -> None:
    # Last in the module: it closes the module's session.
    pool = dragon.backend._pool
    running = [ComputeTask(function=spinner(300)) for _ in range(WORKERS)]
    queued = [ComputeTask(function=workloads.add, args=(i, 1)) for i in range(10)]

    async def body() -> float:
        await dragon.session.submit_tasks(running)
        await dragon.session.submit_tasks(queued)
        await asyncio.sleep(1)
        started = time.monotonic()
        await dragon.session.close()
        return time.monotonic() - started

    took = dragon.run(body(), timeout=120)
    assert took < 60
    assert {t.state for t in running} == {"CANCELED"}
    assert all(t.state in ("CANCELED", "DONE") for t in queued)
    assert not os.path.exists(pool._progress_dir)
