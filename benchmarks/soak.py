"""Soak: many short tasks with planted faults; nothing may be lost or hang, only the planted fail.

    python benchmarks/soak.py                          # 100K tasks on threads and processes, 20K on Dask
    python benchmarks/soak.py --tasks 10000 --dask-tasks 2000 --engines threads,processes

Each engine runs the same workload twice in this process: once with faults planted and once
without (the baseline), and prints the wall-time ratio (faults / none). Planted among the tasks:

- 1 % raise ``ValueError`` (a task's own failure: final, no retry);
- 1 % are executables that exit with status 3 (final; the baseline runs them exiting 0);
- 0.05 % end their worker process with ``os._exit(9)`` on every attempt (lost worker: retried
  ``retries=3`` times by default, then FAILED with ``WorkerLostError``);
- 0.05 % SIGKILL their worker the first time only (lost worker: retried to success).

Threads cannot lose a worker without losing this process, so the thread run plants no kills.
On Dask, one worker is also SIGKILLed from outside when half the tasks have ended: the tasks it
was running are retried (DONE). The run fails (exit 1) if any task is lost, hangs past the bound,
or ends in a state other than the one its fault plants.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import signal
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from rhapsody import ComputeTask, Session, TaskExecutionError, WorkerLostError, get_backend

RAISE, EXIT, KILL_ALWAYS, KILL_ONCE = "raise", "exit", "kill-always", "kill-once"


def work(index: int, fault: str | None, marker: str | None) -> int:
    if fault == RAISE:
        raise ValueError(f"planted failure in task {index}")
    if fault == KILL_ALWAYS:
        os._exit(9)
    if fault == KILL_ONCE and marker is not None and not os.path.exists(marker):
        pathlib.Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return index


def plant(count: int, kills: bool) -> list[str | None]:
    """The fault of each task, spread evenly (deterministic, so both runs compare alike)."""
    faults: list[str | None] = [None] * count
    for index in range(count):
        if index % 100 == 17:
            faults[index] = RAISE
        elif index % 100 == 53:
            faults[index] = EXIT
        elif kills and index % 2000 == 1111:
            faults[index] = KILL_ALWAYS
        elif kills and index % 2000 == 611:
            faults[index] = KILL_ONCE
    return faults


def make_tasks(faults: list[str | None], scratch: str, planted: bool) -> list[ComputeTask]:
    tasks = []
    for index, fault in enumerate(faults):
        if fault == EXIT:
            # The baseline runs the same programs, exiting 0: both runs have the same shape.
            status = "3" if planted else "0"
            tasks.append(ComputeTask(executable="/bin/sh", arguments=["-c", f"exit {status}"]))
            continue
        fault = fault if planted else None
        marker = os.path.join(scratch, str(index)) if fault == KILL_ONCE else None
        tasks.append(ComputeTask(function=work, args=(index, fault, marker)))
    return tasks


def expected(fault: str | None, task: ComputeTask) -> bool:
    if task.executable is not None and fault is None:
        return task.state == "DONE" and task.exit_code == 0
    if fault is None or fault == KILL_ONCE:
        return task.state == "DONE" and task.return_value == int(task.args[0])
    if fault == RAISE:
        return task.state == "FAILED" and isinstance(task.exception, ValueError) and task.retried == 0
    if fault == EXIT:
        return task.state == "FAILED" and isinstance(task.exception, TaskExecutionError) and task.exit_code == 3
    return task.state == "FAILED" and isinstance(task.exception, WorkerLostError) and task.retried == 3


async def kill_one_dask_worker(backend: object, tasks: list[ComputeTask]) -> str:
    """SIGKILL one Dask worker process once half the tasks have ended; say which."""
    while sum(task.done for task in tasks) < len(tasks) // 2:
        await asyncio.sleep(0.2)
    client = backend.client  # type: ignore[attr-defined]
    pids = await asyncio.wrap_future(asyncio.get_running_loop().run_in_executor(None, client.run, os.getpid))
    address, pid = sorted(pids.items())[0]
    os.kill(pid, signal.SIGKILL)
    return f"killed Dask worker {address} (pid {pid}) at {sum(t.done for t in tasks)} tasks ended"


async def run_once(engine: str, count: int, planted: bool, bound: float) -> tuple[float, list[str]]:
    kills = engine != "threads"
    faults = plant(count, kills)
    with tempfile.TemporaryDirectory(prefix="rhapsody-soak-") as scratch:
        tasks = make_tasks(faults, scratch, planted)
        if engine == "threads":
            backend = get_backend("concurrent")
        elif engine == "processes":
            backend = get_backend("concurrent", executor=ProcessPoolExecutor(os.cpu_count() or 2))
        else:
            backend = get_backend("dask", n_workers=2, threads_per_worker=1)
        notes: list[str] = []
        async with Session(backends=[backend]) as session:
            start = time.perf_counter()
            await session.submit_tasks(tasks)
            killer = (asyncio.ensure_future(kill_one_dask_worker(backend, tasks))
                      if engine == "dask" and planted else None)
            try:
                await session.wait_tasks(tasks, timeout=bound)
            except TimeoutError as exc:
                notes.append(f"HUNG: {exc}")
            wall = time.perf_counter() - start
            if killer is not None:
                notes.append(await killer if killer.done() else "the Dask worker kill did not happen")
                killer.cancel()
        if engine == "processes":
            backend.executor.shutdown(wait=False)  # type: ignore[attr-defined]
    lost = [task for task in tasks if not task.done]
    wrong = [(fault if planted else None, task) for fault, task in zip(faults, tasks)
             if not expected(fault if planted else None, task)]
    states = Counter(task.state for task in tasks)
    retried = sum(task.retried for task in tasks)
    by_fault = Counter(fault for fault in faults if planted and fault)
    notes.append(f"states {dict(states)}; planted {dict(by_fault) or 'none'}; re-runs {retried}; "
                 f"not ended {len(lost)}; unexpected outcome {len(wrong)}")
    for fault, task in wrong[:5]:
        notes.append(f"  UNEXPECTED {task.uid} (planted {fault}): {task.state} {task.exception!r}")
    if lost or wrong:
        notes.append("FAIL")
    return wall, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks on threads and processes")
    parser.add_argument("--dask-tasks", type=int, default=20_000, help="tasks on Dask")
    parser.add_argument("--engines", default="threads,processes,dask")
    parser.add_argument("--bound", type=float, default=1800.0, help="seconds before a run counts as hung")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs", flush=True)
    failed = False
    for engine in args.engines.split(","):
        count = args.dask_tasks if engine == "dask" else args.tasks
        faulty, notes = asyncio.run(run_once(engine, count, True, args.bound))
        clean, clean_notes = asyncio.run(run_once(engine, count, False, args.bound))
        print(f"{engine:<10} {count} tasks: with faults {faulty:8.2f} s, without {clean:8.2f} s, "
              f"ratio {faulty / clean:5.2f}", flush=True)
        for note in notes + [f"  baseline: {n}" for n in clean_notes]:
            print(f"  {note}", flush=True)
        failed = failed or any(n.endswith("FAIL") or n.startswith("HUNG") for n in notes + clean_notes)
    print("soak: FAILED" if failed else "soak: ok: no task lost or hung; only the planted tasks failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
