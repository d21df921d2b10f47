"""A RHAPSODY (rhapsody-py) program using functions, executables, an executor it made itself, and
RHAPSODY's error names. Run unchanged by tests/core/test_migration.py, which checks its output.

Its last line runs an executable with capture_stdio=False: its output goes straight to this
program's standard output."""

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor

import rhapsody
from rhapsody.api import ComputeTask, RhapsodyError, Session, SessionError, TaskExecutionError
from rhapsody.backends import ConcurrentExecutionBackend


def square(n):
    return n * n


async def halve(n):
    await asyncio.sleep(0)
    return n / 2


async def main():
    backend = await ConcurrentExecutionBackend.create(ThreadPoolExecutor(max_workers=2))
    async with Session(backends=[backend]) as session:
        functions = [ComputeTask(function=square, args=(3,)), ComputeTask(function=halve, args=(5,))]
        await session.submit_tasks(functions)
        await session.wait_tasks(functions)
        for task in functions:
            print(f"{task.state} {task.return_value} stdout={task.stdout!r} stderr={task.stderr!r}")

        failing = ComputeTask(executable="/bin/sh", arguments=["-c", "echo broken >&2; exit 3"])
        (future,) = await session.submit_tasks([failing])
        try:
            await future
        except TaskExecutionError as error:
            print(f"TaskExecutionError exit_code={error.exit_code} "
                  f"stderr={failing.stderr.strip()} rhapsody_error={isinstance(error, RhapsodyError)}")

        quiet = ComputeTask(executable="/bin/echo", arguments=["straight to the terminal"],
                            capture_stdio=False)
        sys.stdout.flush()  # the child writes to the same file: keep the order
        await session.submit_tasks([quiet])
        await session.wait_tasks([quiet])
        print(f"{quiet.state} stdout={quiet.stdout!r}")

    try:
        await session.submit_tasks([ComputeTask(function=square, args=(1,))])
    except SessionError as error:
        print(f"SessionError: {error}")
    print(f"version ok: {bool(rhapsody.__version__)}")


if __name__ == "__main__":
    asyncio.run(main())
