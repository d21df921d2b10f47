"""rhapsody-dragon against raw Dragon Batch, and against rhapsody's ``concurrent`` backend.

Run under the Dragon launcher (one runtime for every round)::

    dragon benchmarks/bench_dragon.py --tasks 500 --rounds 2 [--profile]

The same no-op workload goes, in one runtime and alternating rounds, through

- raw Batch: ``batch.function(noop, i)`` for every task, then ``task.get()`` for each;
- rhapsody-dragon: ``session.submit_tasks(tasks)`` then ``session.wait_tasks(tasks)``,

each on a fresh Batch with the same options (its start-up is not timed), and prints the wall-time
ratio rhapsody/raw (target <= 1.10; the best round of each is compared). Then the same tasks go
through the ``concurrent`` backend (a thread pool in this process) for tasks/s on this machine.
``--profile`` runs one extra rhapsody-dragon round with cProfile on the submitting thread and on
the monitor thread and prints where their time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from typing import Any

import rhapsody


def noop(i: int) -> int:
    return i


def _batch_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"disable_telem": args.disable_telemetry}
    if args.workers_per_node is not None:
        options["workers_per_node"] = args.workers_per_node
    return options


def raw_batch_round(args: argparse.Namespace) -> float:
    from dragon.workflows.batch import Batch

    batch = Batch(**_batch_options(args))
    try:
        started = time.perf_counter()
        handles = [batch.function(noop, i) for i in range(args.tasks)]
        results = [handle.get() for handle in handles]
        wall = time.perf_counter() - started
        assert results == list(range(args.tasks))
    finally:
        batch.join(timeout=120)
    return wall


async def _rhapsody_round(args: argparse.Namespace, profile: bool) -> tuple[float, str]:
    backend_options: dict[str, Any] = {"disable_telemetry": args.disable_telemetry}
    if args.workers_per_node is not None:
        backend_options["workers_per_node"] = args.workers_per_node
    backend = await rhapsody.get_backend("dragon", **backend_options)
    report = ""
    async with rhapsody.Session(backends=[backend]) as session:
        tasks = [rhapsody.ComputeTask(function=noop, args=(i,)) for i in range(args.tasks)]
        # Python 3.12 allows one active cProfile per process: only the monitor thread is profiled,
        # the submitting side is timed.
        monitor_profile = cProfile.Profile()
        if profile:
            monitor = backend._monitor
            backend._monitor = lambda: monitor_profile.runcall(monitor)
        started = time.perf_counter()
        await session.submit_tasks(tasks)
        submitted = time.perf_counter() - started
        await session.wait_tasks(tasks)
        wall = time.perf_counter() - started
        assert [t.return_value for t in tasks] == list(range(args.tasks)), [t.exception for t in tasks][:3]
    if profile:
        # The monitor thread ends with close(); its profile is complete now.
        report = (f"\nsubmit_tasks: {submitted:.3f} s for {args.tasks} tasks "
                  f"({1e6 * submitted / args.tasks:.0f} us/task, Batch's own batch.function() included)"
                  f"\nwall {wall:.3f} s\n" + _top("monitor thread", monitor_profile))
    return wall, report


def _top(title: str, profile: cProfile.Profile, count: int = 14) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(count)
    return f"\n=== {title}: top {count} by own time ===\n" + out.getvalue()


async def _concurrent_round(args: argparse.Namespace) -> float:
    async with rhapsody.Session(backends=["concurrent"]) as session:
        tasks = [rhapsody.ComputeTask(function=noop, args=(i,)) for i in range(args.tasks)]
        started = time.perf_counter()
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks)
        wall = time.perf_counter() - started
        assert [t.return_value for t in tasks] == list(range(args.tasks))
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers-per-node", type=int, default=None)
    parser.add_argument("--disable-telemetry", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    raw, ours = [], []
    for round_number in range(args.rounds):
        # Alternate the order so neither side always runs on a warmer runtime.
        order = ("raw", "rhapsody") if round_number % 2 == 0 else ("rhapsody", "raw")
        for which in order:
            if which == "raw":
                raw.append(raw_batch_round(args))
            else:
                ours.append(asyncio.run(_rhapsody_round(args, profile=False))[0])
            print(f"round {round_number} {which:8s}: {args.tasks} tasks in "
                  f"{(raw if which == 'raw' else ours)[-1]:.3f} s", flush=True)
    concurrent = asyncio.run(_concurrent_round(args))

    best_raw, best_ours = min(raw), min(ours)
    print(f"\nmachine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {args.tasks} no-op tasks, "
          f"{args.rounds} round(s) each")
    print(f"raw Batch        : best {best_raw:.3f} s  median {statistics.median(raw):.3f} s  "
          f"-> {args.tasks / best_raw:.1f} tasks/s")
    print(f"rhapsody-dragon  : best {best_ours:.3f} s  median {statistics.median(ours):.3f} s  "
          f"-> {args.tasks / best_ours:.1f} tasks/s")
    print(f"wall ratio rhapsody-dragon / raw Batch = {best_ours / best_raw:.3f} (target <= 1.10; "
          f"median ratio {statistics.median(ours) / statistics.median(raw):.3f})")
    print(f"concurrent       : {concurrent:.3f} s -> {args.tasks / concurrent:.1f} tasks/s; "
          f"rhapsody-dragon is {concurrent and best_ours / concurrent:.1f}x its wall time")
    if args.profile:
        print(asyncio.run(_rhapsody_round(args, profile=True))[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
