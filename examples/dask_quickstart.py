"""rhapsody on Dask: functions, async functions, executables and a GPU-routed task.

The backend starts its own LocalCluster (two worker processes, each advertising the abstract
resource GPU=1) and closes it at the end. A task asking for a TPU fails at once: no worker has one.

    python examples/dask_quickstart.py
"""

from __future__ import annotations

import asyncio
import os

import rhapsody
from rhapsody import ComputeTask


def square(x: int) -> int:
    return x * x


async def fetch(name: str) -> str:
    await asyncio.sleep(0.1)  # stands in for I/O
    return f"hello {name}"


def where_am_i() -> str:
    from distributed import get_worker

    return f"worker {get_worker().name} (pid {os.getpid()})"


def fragile() -> None:
    raise ValueError("bad input")


async def main() -> None:
    backend = rhapsody.get_backend("dask", n_workers=2, threads_per_worker=1,
                                   worker_resources={"GPU": 1})
    async with rhapsody.Session(backends=[backend]) as session:
        squares = [ComputeTask(function=square, args=(i,)) for i in range(10)]
        greeting = ComputeTask(function=fetch, args=("dask",))
        listing = ComputeTask(executable="echo $GREETING from $(pwd)",
                              task_backend_specific_kwargs={
                                  "shell": True, "cwd": "/tmp",
                                  "env": {"GREETING": "hi", "PATH": os.environ["PATH"]}})
        on_gpu = ComputeTask(function=where_am_i,
                             task_backend_specific_kwargs={"resources": {"GPU": 1}})
        no_tpu = ComputeTask(function=where_am_i,
                             task_backend_specific_kwargs={"resources": {"TPU": 1}})
        failing = ComputeTask(function=fragile)
        tasks = [*squares, greeting, listing, on_gpu, no_tpu, failing]

        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks)  # reports; never raises for a failed task

        print("squares:", [t.return_value for t in squares])
        print("async:", greeting.return_value)
        print("executable:", listing.stdout.strip(), "exit code", listing.exit_code)
        print("gpu task:", on_gpu.return_value)
        print("tpu task:", no_tpu.state, "-", no_tpu.exception)
        print("failing task:", failing.state, "-", repr(failing.exception))


if __name__ == "__main__":  # Dask starts worker processes that import this module
    asyncio.run(main())
