"""A function that ends its Dragon worker process in batch mode, on a real Dragon runtime (a Batch of its own).

The worker pool (the default) replaces the worker and goes on: tests/dragon/test_pool.py.

dragonhpc 0.15's Batch runs no task again once one of its workers has died; the backend turns
that into failures, never into tasks that wait forever.
"""

from __future__ import annotations

import asyncio

import pytest
from dragon_support import runtime_missing

import rhapsody
from rhapsody import ComputeTask, WorkerLostError
from rhapsody.testing import workloads

pytestmark = pytest.mark.skipif(bool(runtime_missing()), reason=runtime_missing() or "-")

NO_HANG = 150.0  # only proves that nothing waits forever


def test_a_dead_worker_fails_its_task_and_nothing_waits_forever() -> None:
    async def body() -> None:
        backend = rhapsody.get_backend("dragon", function_mode="batch", disable_telemetry=True)
        async with rhapsody.Session(backends=[backend]) as session:
            doomed = ComputeTask(function=workloads.end_own_process, args=(13,))
            others = [ComputeTask(function=workloads.add, args=(i, 1)) for i in range(3)]
            await session.submit_tasks([doomed, *others])
            await session.wait_tasks([doomed, *others], timeout=NO_HANG)
            assert doomed.state == "FAILED"
            assert isinstance(doomed.exception, WorkerLostError)
            assert "Dragon worker process" in str(doomed.exception)
            assert doomed.retried == 0  # a stalled Batch could only fail a retry
            for task in others:
                assert task.state == "DONE" or (
                    task.state == "FAILED" and "runs no task after that" in str(task.exception)
                ), (task.state, task.exception)
            later = ComputeTask(function=workloads.add, args=(1, 1))
            with pytest.raises(RuntimeError, match="failed earlier"):
                await session.submit_tasks([later])
            assert later.state == "NEW"

    asyncio.run(asyncio.wait_for(body(), 2 * NO_HANG))
