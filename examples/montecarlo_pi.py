"""Estimate pi three ways at once on the built-in backend: sync and async Python functions, and
executables that write their results to files, read back when they are done.

    rhapsody run examples/montecarlo_pi.py                  # functions on threads (the default)
    rhapsody run examples/montecarlo_pi.py -o processes=2   # functions on 2 worker processes

The function tasks here are CPU-bound pure Python: on threads they take turns holding the GIL, so
they use about one core however many threads there are. ``-o processes=N`` runs them on a pool of
N worker processes instead (one core each; the functions are shipped to them pickled). Threads
are the better choice for I/O-bound functions and for code that releases the GIL while it works
(numpy, most C extensions), since they start at once and pass arguments without pickling.
Executables always run as their own processes.
"""

from __future__ import annotations

import asyncio
import pathlib
import random
import sys
import tempfile

from rhapsody import ComputeTask, Session

SAMPLES_PER_TASK = 50_000
FUNCTION_TASKS = 200


def hits_in_quarter_circle(seed: int, samples: int) -> int:
    """Count random points of the unit square that fall inside the quarter circle."""
    rng = random.Random(seed)
    return sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)


async def refine(seed: int, samples: int) -> int:
    """The same count as an async task (yielding to the loop half way, as I/O-bound code would)."""
    first = hits_in_quarter_circle(seed, samples // 2)
    await asyncio.sleep(0)
    return first + hits_in_quarter_circle(seed + 10**6, samples - samples // 2)


async def main(session: Session) -> float:
    sync_tasks = [ComputeTask(function=hits_in_quarter_circle, args=(seed, SAMPLES_PER_TASK))
                  for seed in range(FUNCTION_TASKS)]
    async_tasks = [ComputeTask(function=refine, args=(seed + 5000, SAMPLES_PER_TASK))
                   for seed in range(20)]
    # Removed with everything in it when the run ends, however it ends (failure, Ctrl-C).
    with tempfile.TemporaryDirectory(prefix="rhapsody-pi-") as workdir:
        # Each executable runs a fresh Python that estimates pi and writes it to a file in its cwd.
        script = ("import random,sys; r=random.Random(int(sys.argv[1])); n=20000; "
                  "h=sum(r.random()**2+r.random()**2<=1 for _ in range(n)); "
                  "open(f'pi-{sys.argv[1]}.txt','w').write(str(4*h/n))")
        exe_tasks = [ComputeTask(executable=sys.executable, arguments=["-c", script, str(seed)],
                                 task_backend_specific_kwargs={"cwd": workdir})
                     for seed in range(20)]
        tasks = sync_tasks + async_tasks + exe_tasks
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks)

        failed = [t for t in tasks if t.state != "DONE"]
        if failed:
            print(f"{len(failed)} tasks did not finish: first error {failed[0].exception!r}")
            return float("nan")
        results = [pathlib.Path(workdir, f"pi-{seed}.txt").read_text() for seed in range(len(exe_tasks))]
    hits = sum(t.return_value for t in sync_tasks + async_tasks)
    samples = SAMPLES_PER_TASK * len(sync_tasks + async_tasks)
    from_functions = 4 * hits / samples
    from_executables = sum(float(r) for r in results) / len(results)
    print(f"pi from {samples:,} samples in {len(sync_tasks) + len(async_tasks)} function tasks: "
          f"{from_functions:.5f}")
    print(f"pi from {len(exe_tasks)} executables (read from the files they wrote): {from_executables:.4f}")
    return from_functions


if __name__ == "__main__":
    async def _standalone() -> None:
        async with Session() as session:
            await main(session)

    asyncio.run(_standalone())
