"""A program written for RHAPSODY (rhapsody-py), in its own terms: rhapsody.api, rhapsody.backends,
an awaited ConcurrentExecutionBackend, capture_stdio=True, backend.shutdown(). Run unchanged by
tests/core/test_migration.py, which checks what it prints."""

import asyncio
import logging

import rhapsody
from rhapsody.api import ComputeTask, Session
from rhapsody.backends import ConcurrentExecutionBackend

rhapsody.enable_logging(level=logging.DEBUG)


async def main():
    backend = await ConcurrentExecutionBackend()
    session = Session([backend])

    greetings = [
        ComputeTask(executable="/bin/sh", capture_stdio=True,
                    arguments=["-c", f"echo greeting number {n} from $0"])
        for n in (1, 2)
    ]
    await session.submit_tasks(greetings)
    await session.wait_tasks(greetings)
    for task in greetings:
        print(f"{task.state}: {task.stdout.strip() or task.stderr}")

    await backend.shutdown()
    print(f"rhapsody {rhapsody.__version__}")


if __name__ == "__main__":
    asyncio.run(main())
