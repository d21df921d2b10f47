"""What resources= costs the concurrent backend's executables, against raw asyncio subprocesses.

    python benchmarks/bench_resources.py            # 2000 tasks per line
    python benchmarks/bench_resources.py --quick    # 300

Each line runs /bin/true tasks through the concurrent backend and prints the ratio against
asyncio subprocesses started under a semaphore of the same width (bench_core's baseline), in the
same run: tasks that ask for nothing (one core each, as before resources= existed), tasks asking
for one core, and tasks asking for one of two declared GPUs (each gets its own environment with
CUDA_VISIBLE_DEVICES). Then the node's own bookkeeping alone: µs per acquire + release with
nobody waiting, against an asyncio.Semaphore.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench_core import best_of, line, raw_subprocesses

from rhapsody import ComputeTask, Session, get_backend
from rhapsody.builtin.node import Demand, Node

WIDTH = 2  # programs at once, on both sides


async def through_concurrent(n: int, request: dict[str, Any] | None, **node: Any) -> float:
    backend = get_backend("concurrent", max_subprocesses=WIDTH, **node)
    async with Session(backends=[backend]) as session:
        start = time.perf_counter()
        tasks = [ComputeTask(executable="/bin/true", resources=request) for _ in range(n)]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks)
        elapsed = time.perf_counter() - start
        assert all(task.state == "DONE" for task in tasks)
    return elapsed


async def bookkeeping(n: int) -> tuple[float, float]:
    node = Node(cores=WIDTH, gpus=[], gpu_variable="CUDA_VISIBLE_DEVICES", memory=1024, slots=WIDTH)
    one = Demand.of(None)
    start = time.perf_counter()
    for _ in range(n):
        node.release(await node.acquire(one))
    ours = time.perf_counter() - start
    slots = asyncio.Semaphore(WIDTH)
    start = time.perf_counter()
    for _ in range(n):
        async with slots:
            pass
    return ours / n * 1e6, (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    n = 300 if parser.parse_args().quick else 2000
    for label, request, node in (
        ("executables, no request", None, {}),
        ("executables, 1 core each", {"cores_per_rank": 1}, {}),
        ("executables, 1 of 2 GPUs each", {"gpus_per_rank": 1}, {"cores": WIDTH, "gpus": ["a", "b"]}),
    ):
        # Baseline and rhapsody take turns, so that a change in the machine's load hits both.
        raws, ours = [], []
        for _ in range(3):
            raws.append(best_of(1, lambda: raw_subprocesses(n, WIDTH)))
            ours.append(best_of(1, lambda request=request, node=node: through_concurrent(n, request, **node)))
        line(f"{label} ({n})", min(ours), min(raws), "s", 1.1)
    ours, semaphore = asyncio.run(bookkeeping(200_000))
    line("node acquire+release", ours, semaphore, "µs", 2.0)


if __name__ == "__main__":
    main()
