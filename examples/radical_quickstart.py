"""rhapsody on a RADICAL-Pilot pilot on this machine: executables, an RP-sized task, functions.

Run it from an activated venv that has rhapsody-core and rhapsody-radical installed:

    python examples/radical_quickstart.py
"""

import asyncio

import rhapsody
from rhapsody import ComputeTask


def square(x):
    return x * x


async def checked_mean(values):
    await asyncio.sleep(0.01)
    if not values:
        raise ValueError("no values")
    return sum(values) / len(values)


async def main():
    # A 2-core pilot on local.localhost; cleanup=True removes its sandbox and logs afterwards.
    backend = rhapsody.get_backend("radical", resource="local.localhost", cores=2, cleanup=True)
    async with rhapsody.Session(backends=[backend]) as session:
        tasks = [
            ComputeTask(executable="/bin/echo", arguments=["hello from the pilot"]),
            # Any rp.TaskDescription field goes through task_backend_specific_kwargs.
            ComputeTask(executable="/bin/sh", arguments=["-c", 'echo "$GREETING with $RP_CORES_PER_RANK cores"'],
                        task_backend_specific_kwargs={"cores_per_rank": 2,
                                                      "pre_exec": ["export GREETING=hi"]}),
            # Functions (sync or async) run in a Raptor worker inside the pilot.
            ComputeTask(function=square, args=(12,)),
            ComputeTask(function=checked_mean, args=([1, 2, 3, 4],)),
        ]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks)
        for task in tasks:
            print(task.uid, task.state, (task.stdout or "").strip() or task.return_value)

        # A function that raises delivers its own exception.
        failing = ComputeTask(function=checked_mean, args=([],))
        [future] = await session.submit_tasks([failing])
        try:
            await future
        except ValueError as exc:
            print("raised as expected:", exc)


if __name__ == "__main__":
    asyncio.run(main())
