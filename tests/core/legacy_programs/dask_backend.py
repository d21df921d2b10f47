"""A RHAPSODY (rhapsody-py) program for its Dask backend: DaskExecutionBackend used as an async
context manager around a Session that is one too, with sync and async functions and executables.
Run unchanged on a real LocalCluster by tests/dask/test_migration.py, which checks its output."""

import asyncio
import logging

import rhapsody
from rhapsody.api import ComputeTask, Session
from rhapsody.backends import DaskExecutionBackend

rhapsody.enable_logging(level=logging.DEBUG)


def cube(n):
    return n ** 3


async def cube_later(n):
    await asyncio.sleep(0.01)
    return n ** 3


async def main():
    async with DaskExecutionBackend(resources={"n_workers": 2, "threads_per_worker": 1}) as backend:
        session = Session(backends=[backend])
        tasks = [ComputeTask(function=cube, args=(n,)) for n in range(3)]
        tasks += [ComputeTask(function=cube_later, args=(n,)) for n in range(3)]
        tasks += [ComputeTask(executable="/bin/echo", arguments=[f"line {n}"]) for n in range(3)]
        tasks.append(ComputeTask(executable="/bin/sh", arguments=["-c", "echo no >&2; exit 5"]))
        async with session:
            await session.submit_tasks(tasks)
            await session.wait_tasks(tasks)

    done = sum(task.state == "DONE" for task in tasks)
    failed = sum(task.state == "FAILED" for task in tasks)
    print(f"done {done} failed {failed}")
    for task in tasks:
        if task.function:
            print(task.return_value if task.state == "DONE" else task.exception, repr(task.stdout))
        else:
            print(task.stdout.strip() if task.state == "DONE" else f"{task.exit_code} {task.stderr.strip()}")


if __name__ == "__main__":
    asyncio.run(main())
