"""rhapsody-core overhead against raw baselines, measured in one process.

    python benchmarks/bench_core.py            # full sizes (a few minutes on 2 cores)
    python benchmarks/bench_core.py --quick    # small sizes, for a smoke run

Each line prints rhapsody's figure, the raw baseline's, and their ratio (rhapsody / raw; lower is
better). Baselines use the same executor / the same concurrency limit as rhapsody does.
- noop: µs per task end to end (create -> submit -> done -> future resolved) against bare asyncio
  futures created, resolved and gathered the same way. Target <= 2x. Also printed, for reading
  it: the same with Python's cyclic garbage collector paused on both sides.
- threads / processes: wall time of no-op function tasks through the concurrent backend against
  the same executor's submit()+wait(). Targets <= 2x (threads) and <= 1x (processes).
- executables: wall time of /bin/true tasks against asyncio subprocesses under the same
  concurrency limit. Target <= 1.1x.
- rss: resident memory growth after 1M tasks streamed through one session (noop). Target <= 50 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import Any

from rhapsody import ComputeTask, Session, get_backend


def nothing() -> None:
    return None


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def best_of(repeats: int, run: Callable[[], Awaitable[float]]) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        times.append(asyncio.run(run()))
    return min(times)


def line(label: str, ours: float, raw: float, unit: str, target: float) -> None:
    ratio = ours / raw
    verdict = "ok" if ratio <= target else "OVER TARGET"
    print(f"{label:<34} rhapsody {ours:10.3f} {unit:<8} raw {raw:10.3f} {unit:<8} "
          f"ratio {ratio:5.2f}  (target <= {target}) {verdict}", flush=True)


# -- noop: the core's own cost per task ------------------------------------------------------

async def floor_futures(n: int) -> float:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    futures = [loop.create_future() for _ in range(n)]
    for future in futures:
        future.set_result(None)
    await asyncio.gather(*futures)
    return (time.perf_counter() - start) / n * 1e6


async def noop_tasks(n: int, records: list[Any] | None = None) -> float:
    # records: rhapsody.records recorders (bench_records.py measures them on this same loop).
    async with Session(backends=["noop"], records=records) as session:
        start = time.perf_counter()
        tasks = [ComputeTask(function=nothing) for _ in range(n)]
        futures = await session.submit_tasks(tasks)
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - start
    return elapsed / n * 1e6


def noop_pair(n: int, rounds: int, *, collector: bool) -> tuple[float, float]:
    """Best µs/task of noop_tasks and of floor_futures over interleaved rounds."""
    floors, ours_runs = [], []
    for _ in range(rounds):
        gc.collect()
        if not collector:
            gc.disable()
        try:
            floors.append(asyncio.run(floor_futures(n)))
            if collector:
                gc.collect()
            ours_runs.append(asyncio.run(noop_tasks(n)))
        finally:
            gc.enable()
    return min(ours_runs), min(floors)


# -- concurrent vs the raw executor ----------------------------------------------------------

def raw_executor(executor: Executor, n: int) -> float:
    start = time.perf_counter()
    wait([executor.submit(nothing) for _ in range(n)])
    return time.perf_counter() - start


async def through_concurrent(executor: Executor, n: int) -> float:
    async with Session(backends=[get_backend("concurrent", executor=executor)]) as session:
        start = time.perf_counter()
        tasks = [ComputeTask(function=nothing) for _ in range(n)]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks)
        elapsed = time.perf_counter() - start
        assert all(t.state == "DONE" for t in tasks)
    return elapsed


def compare_executor(label: str, make: Callable[[], Executor], n: int, repeats: int, target: float) -> None:
    with make() as executor:
        wait([executor.submit(nothing) for _ in range(executor._max_workers * 4)])  # type: ignore[attr-defined]
        raw = min(raw_executor(executor, n) for _ in range(repeats))
        ours = best_of(repeats, lambda: through_concurrent(executor, n))
    line(f"{label} ({n} no-op functions)", ours, raw, "s", target)


# -- executables -----------------------------------------------------------------------------

async def raw_subprocesses(n: int, limit: int) -> float:
    slots = asyncio.Semaphore(limit)

    async def one() -> None:
        async with slots:
            process = await asyncio.create_subprocess_exec(
                "/bin/true", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True)
            await process.communicate()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - start


async def concurrent_executables(n: int, limit: int) -> float:
    async with Session(backends=[get_backend("concurrent", max_subprocesses=limit)]) as session:
        start = time.perf_counter()
        tasks = [ComputeTask(executable="/bin/true") for _ in range(n)]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks)
        elapsed = time.perf_counter() - start
        assert all(t.state == "DONE" for t in tasks)
    return elapsed


# -- memory ----------------------------------------------------------------------------------

async def stream_noop(total: int, window: int) -> tuple[float, float]:
    async with Session(backends=["noop"]) as session:
        for _ in range(2):  # warm up allocator pools before the baseline reading
            tasks = [ComputeTask(function=nothing) for _ in range(window)]
            await session.submit_tasks(tasks)
            await session.wait_tasks(tasks)
        del tasks
        gc.collect()
        before = rss_mb()
        for _ in range(total // window):
            tasks = [ComputeTask(function=nothing) for _ in range(window)]
            await session.submit_tasks(tasks)
            await session.wait_tasks(tasks)
        del tasks
        gc.collect()
        return before, rss_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    repeats = 3
    cpus = os.cpu_count() or 1
    print(f"python {sys.version.split()[0]}, {cpus} CPUs, pid {os.getpid()}")

    n = 100_000 // scale
    # Interleaved and best-of, so load from other processes hits both sides alike.
    ours, floor = noop_pair(n, repeats + 2, collector=True)
    line(f"noop ({n} tasks, per task)", ours, floor, "µs", 2.0)
    # For reading the line above: how much of the gap is the collector rescanning live tasks.
    ours, floor = noop_pair(n, repeats, collector=False)
    print(f"  (same, collector paused: rhapsody {ours:.3f} µs, raw {floor:.3f} µs, "
          f"ratio {ours / floor:.2f}; not a target)", flush=True)

    n = 20_000 // scale
    compare_executor("threads", lambda: ThreadPoolExecutor(max_workers=cpus), n, repeats, 2.0)
    n = 10_000 // scale
    compare_executor("processes", lambda: ProcessPoolExecutor(max_workers=cpus), n, repeats, 1.0)

    n = 1_000 // scale
    raw = min(asyncio.run(raw_subprocesses(n, cpus)) for _ in range(repeats))
    ours = min(asyncio.run(concurrent_executables(n, cpus)) for _ in range(repeats))
    line(f"executables ({n} x /bin/true)", ours, raw, "s", 1.1)

    total = 1_000_000 // scale
    before, after = asyncio.run(stream_noop(total, 10_000))
    print(f"rss after {total} tasks streamed (noop)  before {before:.1f} MB  after {after:.1f} MB  "
          f"growth {after - before:+.1f} MB  (target <= 50 MB) "
          f"{'ok' if after - before <= 50 else 'OVER TARGET'}", flush=True)


if __name__ == "__main__":
    main()
