"""Endpoint mode: vLLM runs already (started here as someone else would); the backend only talks
to it. Also: one Session routing ComputeTasks and AITasks by their ``backend`` field, and the
engine dying under in-flight requests.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
import pytest_asyncio
from vllm_support import ENGINE_MISSING, LONG, TINY_ENGINE_OPTIONS, run, settle

from rhapsody import AITask, ComputeTask, Session
from rhapsody_vllm import InferenceError, VLLMBackend
from rhapsody_vllm.server import OwnedServer, free_port, group_members

pytestmark = [
    pytest.mark.skipif(ENGINE_MISSING is not None, reason=ENGINE_MISSING or ""),
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def external(tiny_model: Path) -> AsyncIterator[OwnedServer]:
    """A vLLM server this module starts itself; the backends under test are only given its URL."""
    server = OwnedServer(
        model=str(tiny_model), served_name="tiny-ext", host="127.0.0.1", port=None,
        options=TINY_ENGINE_OPTIONS, extra_args=[], python=None, env=None, log_path=None,
    )
    await server.start(timeout=600)
    try:
        yield server
    finally:
        await server.stop(grace=10)


async def test_endpoint_backend_routes_by_model(external: OwnedServer) -> None:
    backend = VLLMBackend(inference_endpoint=external.base_url.removesuffix("/v1"))
    async with Session(backends=[backend]) as session:
        assert backend.models == {"tiny-ext": external.base_url}
        assert backend.server is None
        default, named = await run(session, [
            AITask("the model runs", max_tokens=6, temperature=0),
            AITask("the model runs", model="tiny-ext", max_tokens=6, temperature=0),
        ])
        assert default.state == named.state == "DONE"
        assert default.response == named.response
        with pytest.raises(ValueError, match=r"unknown model 'tiny'; this vllm backend serves: tiny-ext"):
            await session.submit_tasks([AITask("x", model="tiny")])


async def test_closing_an_endpoint_backend_leaves_the_server_running(external: OwnedServer) -> None:
    backend = VLLMBackend(inference_endpoint=external.base_url)
    async with Session(backends=[backend]) as session:
        await run(session, [AITask("x", max_tokens=2)])
    assert external.pid in group_members(external.pid)
    async with httpx.AsyncClient() as client:
        assert (await client.get(external.base_url.removesuffix("/v1") + "/health")).status_code == 200


async def test_task_inference_endpoint(external: OwnedServer) -> None:
    # A backend with no model and no endpoint of its own: every task says where to go.
    async with Session(backends=[VLLMBackend()]) as session:
        with pytest.raises(ValueError, match="no model given and this backend has no default"):
            await session.submit_tasks([AITask("x")])
        task, same_endpoint = await run(session, [
            AITask("x", max_tokens=3, temperature=0, inference_endpoint=external.base_url),
            AITask("x", max_tokens=3, temperature=0, model="tiny-ext",
                   inference_endpoint=external.base_url + "/"),
        ])
        assert task.state == same_endpoint.state == "DONE"
        assert task.response == same_endpoint.response
        wrong = AITask("x", model="gpt-4", inference_endpoint=external.base_url)
        with pytest.raises(ValueError, match=r"model 'gpt-4' is not served by .* \(it serves: tiny-ext\)"):
            await session.submit_tasks([wrong])


async def test_unreachable_task_endpoint_is_refused_at_submit(external: OwnedServer) -> None:
    nowhere = f"http://127.0.0.1:{free_port('127.0.0.1')}/v1"
    async with Session(backends=[VLLMBackend(inference_endpoint=external.base_url)]) as session:
        with pytest.raises(ConnectionError, match=f"cannot list the models of inference endpoint {nowhere}"):
            await session.submit_tasks([AITask("x", inference_endpoint=nowhere)])
        with pytest.raises(ValueError, match="must be an http"):
            await session.submit_tasks([AITask("x", inference_endpoint="node12:8000")])


def _square(x: int) -> int:
    return x * x


async def test_mixed_session_routes_by_backend_field(external: OwnedServer) -> None:
    vllm = VLLMBackend(inference_endpoint=external.base_url)
    async with Session(backends=["concurrent", vllm]) as session:
        compute = [ComputeTask(function=_square, args=(i,), backend="concurrent") for i in range(5)]
        ai = [AITask(f"square of {i}", max_tokens=4, backend="vllm") for i in range(5)]
        unrouted_ai = AITask("no backend named", max_tokens=2)  # the only backend running "ai"
        await run(session, [*compute, *ai, unrouted_ai])
        assert [t.return_value for t in compute] == [0, 1, 4, 9, 16]
        assert all(t.state == "DONE" and t.response is not None for t in ai)
        assert unrouted_ai.backend == "vllm" and unrouted_ai.state == "DONE"
        with pytest.raises(ValueError, match="backend 'vllm' does not run function tasks"):
            await session.submit_tasks([ComputeTask(function=_square, args=(1,), backend="vllm")])


async def test_engine_core_dying_fails_in_flight_tasks(external: OwnedServer) -> None:
    """Kill vLLM's engine-core process under load: every in-flight task fails with the server's
    message or a lost connection, nothing hangs, and later tasks fail clearly too."""
    backend = VLLMBackend(inference_endpoint=external.base_url)
    async with Session(backends=[backend]) as session:
        tasks = [AITask(f"long {i}", **LONG) for i in range(60)]
        await session.submit_tasks(tasks)
        await settle(0.5)
        assert external.pid is not None
        cores = [p for p in psutil.Process(external.pid).children(recursive=True)
                 if "EngineCore" in p.name()]
        assert cores, "no VLLM::EngineCore child found"
        os.kill(cores[0].pid, signal.SIGKILL)
        await session.wait_tasks(tasks, timeout=120)
        failed = [t for t in tasks if t.state == "FAILED"]
        assert failed and all(t.state in ("DONE", "FAILED") for t in tasks)
        for task in failed:
            exc = task.exception
            assert isinstance(exc, InferenceError) and task.uid in str(exc)
            assert exc.endpoint == external.base_url
            assert (exc.status == 500 and "EngineCore encountered an issue" in exc.detail) or (
                exc.status is None and "connection lost" in exc.detail), exc
        # vLLM's API server exits once its engine is dead; then requests cannot connect.
        assert external.exited is not None
        await asyncio.wait_for(asyncio.shield(external.exited), 60)
        (late,) = await run(session, [AITask("x", max_tokens=2)])
        assert late.state == "FAILED"
        assert "connection lost: ConnectError" in str(late.exception)

