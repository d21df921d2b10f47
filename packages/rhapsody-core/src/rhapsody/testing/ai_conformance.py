"""``AIBackendConformance``: the contract for backends that run ``AITask`` (inference backends).

Subclass it like :class:`~rhapsody.testing.BackendConformance`; set ``model`` to a model the
backend serves (``None`` for its default). The checks need no particular model quality: they
look at the fields a result must have, never at what the model says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import pytest

from ..backend import BaseBackend
from ..plugins import get_backend
from ..session import Session
from ..task import AITask, ComputeTask
from .conformance import ConformanceHarness, shared_harness


class AIBackendConformance:
    """Checks an inference backend: result fields, batches of prompts, many requests in flight,
    unknown models refused at submit, compute tasks refused, cancel and a bounded close.

    Class attributes: ``backend_name``, ``backend_options``, ``model`` (a served model, or
    ``None`` for the backend's default), ``in_flight`` (how many tasks the concurrency test
    submits at once) and ``task_timeout`` (seconds a test may take before it fails as hung).
    """

    backend_name: ClassVar[str] = ""
    backend_options: ClassVar[Mapping[str, Any]] = {}
    model: ClassVar[str | None] = None
    in_flight: ClassVar[int] = 24
    task_timeout: ClassVar[float] = 300.0

    def make_backend(self, request: pytest.FixtureRequest) -> BaseBackend:
        """Build the backend under test (default: ``get_backend(backend_name, **backend_options)``)."""
        if not self.backend_name:
            pytest.skip(f"{type(self).__name__} names no backend_name")
        return get_backend(self.backend_name, **dict(self.backend_options))

    @pytest.fixture(scope="class")
    @classmethod
    def rhapsody_ai_harness(cls, request: pytest.FixtureRequest) -> Iterator[ConformanceHarness]:
        yield from shared_harness(cls(), request)

    def _task(self, prompt: str | list[str] = "Say something.", **fields: Any) -> AITask:
        fields.setdefault("max_tokens", 8)
        fields.setdefault("temperature", 0.0)
        return AITask(prompt=prompt, model=self.model, **fields)

    def test_result_fields(self, rhapsody_ai_harness: ConformanceHarness) -> None:
        async def body(session: Session) -> None:
            task = self._task()
            [future] = await session.submit_tasks([task])
            assert await future is task
            assert task.state == "DONE"
            assert isinstance(task.response, str)
            assert task.return_value == task.response
            assert task.finish_reason in ("stop", "length")
            assert isinstance(task.usage, dict) and task.usage.get("completion_tokens", 0) >= 1

        rhapsody_ai_harness.run(body)

    def test_list_of_prompts_answers_each(self, rhapsody_ai_harness: ConformanceHarness) -> None:
        async def body(session: Session) -> None:
            task = self._task(["First prompt.", "Second prompt.", "Third prompt."])
            await session.submit_tasks([task])
            await session.wait_tasks([task])
            assert task.state == "DONE", task.exception
            assert isinstance(task.response, list) and len(task.response) == 3

        rhapsody_ai_harness.run(body)

    def test_many_requests_in_flight(self, rhapsody_ai_harness: ConformanceHarness) -> None:
        async def body(session: Session) -> None:
            tasks = [self._task(f"Prompt number {i}.") for i in range(self.in_flight)]
            await session.submit_tasks(tasks)
            await session.wait_tasks(tasks)
            assert [t.state for t in tasks] == ["DONE"] * len(tasks), [t.exception for t in tasks]
            assert session.in_flight == 0

        rhapsody_ai_harness.run(body)

    def test_unknown_model_is_refused_at_submit(self, rhapsody_ai_harness: ConformanceHarness) -> None:
        async def body(session: Session) -> None:
            task = AITask(prompt="hello", model="rhapsody-kit-no-such-model")
            with pytest.raises(ValueError, match="rhapsody-kit-no-such-model"):
                await session.submit_tasks([task])
            assert task.state == "NEW"

        rhapsody_ai_harness.run(body)

    def test_compute_tasks_are_refused(self, rhapsody_ai_harness: ConformanceHarness) -> None:
        async def body(session: Session) -> None:
            with pytest.raises(ValueError, match="function tasks"):
                await session.submit_tasks([ComputeTask(function=print)])

        rhapsody_ai_harness.run(body)

    def test_cancel_in_flight(self, rhapsody_ai_harness: ConformanceHarness) -> None:
        async def body(session: Session) -> None:
            task = self._task(max_tokens=64)
            [future] = await session.submit_tasks([task])
            # Cancelled at once: the backend's runner may not have started yet (a classic way to
            # lose a task is to cancel an asyncio task before its first step and never report).
            if await session.cancel_task(task, grace=self.task_timeout / 4):
                assert task.state == "CANCELED"
                assert future.cancelled()
            else:  # it finished first; it must still have ended
                await session.wait_tasks([task], timeout=self.task_timeout / 2)
                assert task.state in ("DONE", "FAILED")

        rhapsody_ai_harness.run(body)

    def test_close_with_tasks_in_flight_is_bounded(self, request: pytest.FixtureRequest) -> None:
        loop = asyncio.new_event_loop()

        async def body() -> None:
            session = Session(backends=[self.make_backend(request)])
            async with session:
                tasks = [self._task(f"Prompt {i}.", max_tokens=32) for i in range(4)]
                await session.submit_tasks(tasks)
            assert all(t.state in ("DONE", "FAILED", "CANCELED") for t in tasks)
            assert all(t.future is not None and t.future.done() for t in tasks)

        try:
            loop.run_until_complete(asyncio.wait_for(body(), self.task_timeout))
        finally:
            loop.close()

