"""A RHAPSODY (rhapsody-py) program that gives ConcurrentExecutionBackend a process pool it made,
uses the backend as an async context manager and awaits tasks one by one. Run unchanged by
tests/core/test_migration.py, which checks its output."""

import asyncio
import os
from concurrent.futures import ProcessPoolExecutor

from rhapsody.api import ComputeTask, Session
from rhapsody.backends import ConcurrentExecutionBackend


def square_and_pid(n):
    return n * n, os.getpid()


async def main():
    executor = ProcessPoolExecutor(max_workers=2)
    async with ConcurrentExecutionBackend(executor) as backend:
        session = Session(backends=[backend])
        tasks = [ComputeTask(function=square_and_pid, args=(n,)) for n in range(6)]
        await session.submit_tasks(tasks)
        results = [(await task).return_value for task in tasks]
        print([value for value, _ in results])
        print(f"workers other than this process: {os.getpid() not in {pid for _, pid in results}}")
    try:
        executor.submit(os.getpid)
        print("executor shut down with the backend: False")
    except RuntimeError:
        print("executor shut down with the backend: True")


if __name__ == "__main__":
    asyncio.run(main())
