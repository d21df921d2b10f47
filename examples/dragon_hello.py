"""Functions, an async function and executables on Dragon: run with `dragon examples/dragon_hello.py`."""

import asyncio
import tempfile

import rhapsody


def square(x: int) -> int:
    return x * x


async def double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


async def main() -> None:
    backend = await rhapsody.get_backend("dragon")          # starts the worker pool (seconds)
    async with rhapsody.Session(backends=[backend]) as session:
        workdir = tempfile.mkdtemp()
        tasks = [
            rhapsody.ComputeTask(function=square, args=(7,)),
            rhapsody.ComputeTask(function=double, args=(21,)),  # async functions work too
            rhapsody.ComputeTask(executable="/bin/pwd",
                                 task_backend_specific_kwargs={"process_template": {"cwd": workdir}}),
            rhapsody.ComputeTask(executable="echo $GREETING from Dragon",
                                 task_backend_specific_kwargs={
                                     "shell": True,
                                     "process_template": {"env": {"GREETING": "hello"}}}),
        ]
        await session.submit_tasks(tasks)
        await backend.fence()                                   # Dragon has run them all
        await session.wait_tasks(tasks)
        for task in tasks:
            print(task.uid, task.state, task.return_value, (task.stdout or "").strip())


asyncio.run(main())
