"""The AI conformance kit runs against a small in-test inference backend that answers at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from rhapsody import BaseBackend, Task
from rhapsody.testing import AIBackendConformance


class EchoModelBackend(BaseBackend):
    """Answers every prompt with its reversed text after a short delay (a stand-in model)."""

    name = "echo-model"
    task_kinds = frozenset({"ai"})
    models = frozenset({"echo"})

    def __init__(self) -> None:
        super().__init__()
        self._running: dict[str, asyncio.Task[None]] = {}

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            if task.model not in (None, *self.models):
                raise ValueError(f"task {task.uid}: model {task.model!r} is not served (serving: echo)")
        for task in tasks:
            runner = asyncio.get_running_loop().create_task(self._answer(task))
            # A runner cancelled before its first step never reaches its own except clause.
            runner.add_done_callback(lambda r, t=task: r.cancelled() and self._cancelled(t))
            self._running[task.uid] = runner

    def _cancelled(self, task: Task) -> None:
        self._running.pop(task.uid, None)
        self.report([(task, "CANCELED")])

    async def _answer(self, task: Task) -> None:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self._cancelled(task)
            return
        prompts = task.prompt if isinstance(task.prompt, list) else [task.prompt]
        answers = [p[::-1][: task.max_tokens or 16] for p in prompts]
        task["response"] = task["return_value"] = answers if isinstance(task.prompt, list) else answers[0]
        task["finish_reason"] = "length"
        task["usage"] = {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": sum(map(len, answers))}
        self._running.pop(task.uid, None)
        self.report([(task, "DONE")])

    async def cancel_task(self, task: Task) -> bool:
        runner = self._running.get(task.uid)
        return runner.cancel() if runner is not None else False

    async def _shutdown(self) -> None:
        for runner in list(self._running.values()):
            runner.cancel()
        await asyncio.sleep(0)


class TestEchoModel(AIBackendConformance):
    model = "echo"

    def make_backend(self, request: pytest.FixtureRequest) -> BaseBackend:
        return EchoModelBackend()
