"""Owned mode, the engine killed from outside (as the OOM killer would): in-flight tasks fail
with EngineDiedError, later tasks too, nothing hangs, and close still cleans up."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from vllm_support import ENGINE_MISSING, LONG, TINY_ENGINE_OPTIONS, group_gone, run, settle

from rhapsody import AITask, Session
from rhapsody_vllm import EngineDiedError, VLLMBackend
from rhapsody_vllm.server import group_members

pytestmark = [
    pytest.mark.skipif(ENGINE_MISSING is not None, reason=ENGINE_MISSING or ""),
    pytest.mark.asyncio(loop_scope="module"),
]


async def test_killed_server_fails_in_flight_tasks(tiny_model: Path) -> None:
    backend = VLLMBackend(model=str(tiny_model), served_model_name="tiny", **TINY_ENGINE_OPTIONS)
    async with Session(backends=[backend]) as session:
        server = backend.server
        assert server is not None and server.pid is not None
        tasks = [AITask(f"long {i}", **LONG) for i in range(60)]
        await session.submit_tasks(tasks)
        await settle(0.5)
        os.killpg(server.pid, signal.SIGKILL)
        await session.wait_tasks(tasks, timeout=60)
        failed = [t for t in tasks if t.state == "FAILED"]
        assert failed and all(t.state in ("DONE", "FAILED") for t in tasks)
        for task in failed:
            assert isinstance(task.exception, EngineDiedError), task.exception
            message = str(task.exception)
            assert task.uid in message
            assert f"the vLLM server this backend started (pid {server.pid}) exited with status -9" in message
        with pytest.raises(EngineDiedError, match="exited with status -9"):
            await failed[0]
        # The group is gone (the backend killed what survived the leader), and new tasks fail
        # at once with the same reason instead of waiting on a dead server.
        assert await group_gone(server.pid) == []
        (late,) = await run(session, [AITask("x", max_tokens=2)], timeout=10)
        assert late.state == "FAILED"
        assert isinstance(late.exception, EngineDiedError)
        assert "exited with status -9" in str(late.exception)
        # A request the death watch cuts off before its first step (the watch cancels what is
        # in flight) fails with the reason too; only the program's cancel makes a task CANCELED.
        cut = AITask("y", max_tokens=2)
        await session.submit_tasks([cut])
        backend.in_flight.find(cut).handle.cancel()
        await session.wait_tasks([cut], timeout=10)
        assert cut.state == "FAILED"
        assert isinstance(cut.exception, EngineDiedError)
    assert group_members(server.pid) == []
