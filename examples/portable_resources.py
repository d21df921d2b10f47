"""One workload, unchanged, on the built-in concurrent backend and on Dask: resources=.

Each task says what it needs with ``ComputeTask(resources={...})``; the backend decides where and
when it runs. The workload has four one-GPU tasks, two whole-node tasks (all four cores) and
eight small ones (one core, 100 MiB). Each prints when it ran and the ``CUDA_VISIBLE_DEVICES``
it was given.

    python examples/portable_resources.py                 # concurrent: one node, 4 cores, 2 GPUs
    python examples/portable_resources.py --backend dask  # two Dask workers, each 4 cores, 1 GPU

The machine needs no GPU: the concurrent node declares two made-up device ids (on a GPU machine,
leave ``gpus=`` out and the devices are found). Each GPU task sees exactly one of them, and no
two GPU tasks hold the same one at once. Dask's ``GPU`` is a count the scheduler keeps, not a
device: its GPU tasks run at most one per worker at a time, and see no ``CUDA_VISIBLE_DEVICES``
of their own (dask-cuda's ``LocalCUDACluster`` gives each worker its device).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import rhapsody
from rhapsody import ComputeTask, Session

CORES = 4
GPU_IDS = ["fake-gpu-0", "fake-gpu-1"]

# The program: sleep a little, then print when it started and ended and which GPUs it sees.
RECORD = ('start=$(date +%s.%N); sleep {seconds}; '
          'echo "$start $(date +%s.%N) ${{CUDA_VISIBLE_DEVICES-unset}}"')


def workload() -> list[ComputeTask]:
    """The tasks, the same whichever backend runs them."""
    def task(name: str, seconds: float, resources: dict[str, int]) -> ComputeTask:
        return ComputeTask(executable="/bin/sh", name=name, resources=resources,
                           arguments=["-c", RECORD.format(seconds=seconds)])

    gpu = [task(f"gpu-{i}", 0.5, {"gpus_per_rank": 1}) for i in range(4)]
    whole = [task(f"node-{i}", 0.3, {"cores_per_rank": CORES}) for i in range(2)]
    small = [task(f"small-{i}", 0.2, {"cores_per_rank": 1, "memory_per_rank": 100}) for i in range(8)]
    return [*gpu, whole[0], *small[:4], whole[1], *small[4:]]


def backend(name: str) -> rhapsody.BaseBackend:
    """The only line that differs between the two runs: what the machine offers."""
    if name == "concurrent":
        return rhapsody.get_backend("concurrent", cores=CORES, gpus=GPU_IDS)
    return rhapsody.get_backend("dask", n_workers=2, threads_per_worker=CORES,
                                worker_resources={"CPU": CORES, "GPU": 1, "MEMORY": 4096})


async def run(session: Session) -> list[ComputeTask]:
    tasks = workload()
    await session.submit_tasks(tasks)
    await session.wait_tasks(tasks)
    return tasks


def interval(task: ComputeTask) -> tuple[float, float, str]:
    """When the task's program started and ended (seconds since the epoch), and its GPUs."""
    start, end, devices = task.stdout.rstrip("\n").split(" ", 2)
    return float(start), float(end), devices


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) spans that were running at one instant."""
    return max((sum(s <= t < e for s, e in spans) for t, _ in spans), default=0)


def report(tasks: list[ComputeTask]) -> None:
    zero = min(interval(task)[0] for task in tasks if task.state == "DONE")
    for task in tasks:
        if task.state != "DONE":
            print(f"{task.name:8} {task.state}: {task.exception or task.stderr}")
            continue
        start, end, devices = interval(task)
        print(f"{task.name:8} ran {start - zero:5.2f} s to {end - zero:5.2f} s  "
              f"CUDA_VISIBLE_DEVICES={devices or '(empty: no GPU)'}")
    done = [task for task in tasks if task.state == "DONE"]
    gpu = [interval(task)[:2] for task in done if task.resources.get("gpus_per_rank")]
    print(f"at most {most_at_once([interval(task)[:2] for task in done])} tasks ran at once, "
          f"{most_at_once(gpu)} of them GPU tasks")


async def main(name: str) -> None:
    began = time.monotonic()
    async with Session(backends=[backend(name)]) as session:
        tasks = await run(session)
    report(tasks)
    print(f"{len(tasks)} tasks on {name} in {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["concurrent", "dask"], default="concurrent")
    asyncio.run(main(parser.parse_args().backend))
