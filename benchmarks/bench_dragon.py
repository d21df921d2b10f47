"""rhapsody-dragon's worker pool against the raw Dragon pool, a process pool and raw Batch.

Run under the Dragon launcher (one runtime for every part)::

    dragon benchmarks/bench_dragon.py [--tasks 10000] [--rounds 3] [--batch-tasks 200]

The same no-op function goes, in one runtime, through

- rhapsody-dragon (``function_mode="pool"``, the default): ``session.submit_tasks(tasks)`` then
  ``session.wait_tasks(tasks)``;
- raw Dragon pool: ``dragon.native.Pool(cores).map_async(noop, range(n), chunksize=c)`` (the same
  Dragon parts, ProcessGroup and Queues, and the chunks rhapsody-dragon cuts from a burst:
  ``c = ceil(n / (4 * cores))``, at most 1024);
- rhapsody-dragon's pool layer alone (``rhapsody_dragon.pool.FunctionPool`` fed tasks built
  beforehand, reporting to a counter: no session), for what the Dragon layer itself adds;
- raw Dragon pool, one result per task: ``pool.apply_async(noop, (i,))`` for each task, then
  ``.get()`` on each (what a program that needs each task's own result and error writes against
  the raw pool; on ``--apply-tasks`` tasks, as it is slow);
- ``ProcessPoolExecutor(cores)`` driven by rhapsody's ``concurrent`` backend (in a child Python
  of this script, started without Dragon's multiprocessing patches, which break
  ``ProcessPoolExecutor`` inside a Dragon process; the Dragon runtime is still up meanwhile);
- raw ``dragon.workflows.batch.Batch``: ``batch.function(noop, i)`` then ``.get()`` for each, on
  ``--batch-tasks`` tasks only (about 3 tasks/s on 2 cores: 10K would take an hour; said so in
  the output).

Each prints tasks/s (best of ``--rounds``; start-up not timed) and one-task round-trip latency
(submit -> result, one task at a time on an idle pool), p50 and p95: back to back, and after
``--idle-gap`` seconds of nothing (a pool that has gone quiet: Dragon's waits sleep by then). Then the ratios the issue
sets targets for: rhapsody-dragon tasks/s >= 0.5x the process pool's, p50 <= 10 ms, and our
overhead (wall time) <= 1.10x the raw Dragon pool's.

Two more measures, for reading that last ratio:

- what building the same no-op tasks as ``ComputeTask`` objects costs alone (no session, no
  backend), against raw ``map_async``'s whole wall: a floor under any design in which each task is
  an object of its own;
- short tasks that do some work (``--work-us``, a pure-Python spin of that many microseconds each,
  ``--work-tasks`` of them): rhapsody-dragon against raw ``map_async`` with the same chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import rhapsody

CHUNK = 1024  # rhapsody-dragon's default chunk_size, given to map_async too


def noop(i: int) -> int:
    return i


def spin(i: int, microseconds: float) -> int:
    """Keeps its CPU busy for ``microseconds`` (a short task that does work), returns ``i``."""
    deadline = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < deadline:
        pass
    return i


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p95 of ``samples`` (seconds), in milliseconds."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return 1e3 * statistics.median(ordered), 1e3 * p95


@dataclasses.dataclass
class Figures:
    name: str
    tasks: int
    walls: list[float]
    latencies: list[float]
    note: str = ""
    work: list[list[float]] = dataclasses.field(default_factory=list)  # per --work-us value, its rounds' walls
    idle_latencies: list[float] = dataclasses.field(default_factory=list)  # after --idle-gap s of nothing

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def rate(self) -> float:
        return self.tasks / self.best

    def line(self) -> str:
        text = f"{self.name:<34} {self.tasks:>6} tasks  best {self.best:7.3f} s  {self.rate:9.0f} tasks/s  "
        if self.latencies:
            p50, p95 = percentiles(self.latencies)
            text += f"latency p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  ({len(self.latencies)} samples)"
        text += self.note
        if self.idle_latencies:
            p50, p95 = percentiles(self.idle_latencies)
            text += (f"\n{'':<34} one task after an idle gap: latency p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  "
                     f"({len(self.idle_latencies)} samples)")
        return text


# -- rhapsody sessions -----------------------------------------------------------------------

async def session_figures(name: str, backend: rhapsody.BaseBackend, args: argparse.Namespace) -> Figures:
    async with rhapsody.Session(backends=[backend]) as session:
        latencies = [await session_latency(session, i, 0.0) for i in range(args.latency_samples)]
        idle_latencies = [await session_latency(session, i, args.idle_gap) for i in range(args.idle_latency_samples)]
        walls = [await session_round(session, args.tasks, None) for _ in range(args.rounds)]
        work = [[await session_round(session, args.work_tasks, us) for _ in range(args.rounds)] for us in args.work_us]
    return Figures(name, args.tasks, walls, latencies, work=work, idle_latencies=idle_latencies)


async def session_latency(session: rhapsody.Session, i: int, gap: float) -> float:
    """One no-op task's round trip (submit -> resolved), after ``gap`` seconds of nothing."""
    await asyncio.sleep(gap)
    task = rhapsody.ComputeTask(function=noop, args=(i,))
    started = time.perf_counter()
    await session.submit_tasks([task])
    await task
    return time.perf_counter() - started


def calls(count: int, microseconds: float | None) -> list[tuple[int, ...]]:
    """The arguments of ``count`` no-op calls (``microseconds=None``) or spins of that long."""
    return [(i,) if microseconds is None else (i, microseconds) for i in range(count)]


async def session_round(session: rhapsody.Session, count: int, microseconds: float | None) -> float:
    """One round: ``count`` tasks built, submitted and waited for; returns its wall time (the
    tasks are built inside it, as a program builds them)."""
    function = noop if microseconds is None else spin
    started = time.perf_counter()
    tasks = [rhapsody.ComputeTask(function=function, args=args) for args in calls(count, microseconds)]
    await session.submit_tasks(tasks)
    await session.wait_tasks(tasks)
    wall = time.perf_counter() - started
    assert [t.return_value for t in tasks] == list(range(count)), [t.exception for t in tasks][:3]
    return wall


def task_building_wall(args: argparse.Namespace) -> float:
    """Best wall time of building ``args.tasks`` no-op ``ComputeTask`` objects, and nothing else."""
    walls = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        tasks = [rhapsody.ComputeTask(function=noop, args=(i,)) for i in range(args.tasks)]
        walls.append(time.perf_counter() - started)
        del tasks
    return min(walls)


# -- raw Dragon ------------------------------------------------------------------------------

def raw_pool_figures(args: argparse.Namespace, cores: int) -> Figures:
    from dragon.native.pool import Pool

    pool = Pool(processes=cores)
    try:
        pool.apply_async(noop, (0,)).get(timeout=120)  # the workers are up
        latencies = [raw_latency(pool, i, 0.0) for i in range(args.latency_samples)]
        idle_latencies = [raw_latency(pool, i, args.idle_gap) for i in range(args.idle_latency_samples)]
        walls = [raw_round(pool, cores, args.tasks, None) for _ in range(args.rounds)]
        work = [[raw_round(pool, cores, args.work_tasks, us) for _ in range(args.rounds)] for us in args.work_us]
    finally:
        pool.close()
        pool.join()
    return Figures(f"raw dragon.native.Pool({cores}).map_async", args.tasks, walls, latencies, work=work,
                   idle_latencies=idle_latencies)


def raw_latency(pool: Any, i: int, gap: float) -> float:
    """One no-op ``apply_async`` round trip on the raw pool, after ``gap`` seconds of nothing."""
    time.sleep(gap)
    started = time.perf_counter()
    pool.apply_async(noop, (i,)).get(timeout=60)
    return time.perf_counter() - started


def raw_round(pool: Any, cores: int, count: int, microseconds: float | None) -> float:
    """One ``map_async`` round, cut as rhapsody-dragon cuts a burst of ``count`` tasks: in
    ``4 * cores`` chunks, at most CHUNK tasks each (10K no-op tasks: 1024, as before)."""
    started = time.perf_counter()
    call = noop if microseconds is None else functools.partial(spin, microseconds=microseconds)
    chunk = min(CHUNK, math.ceil(count / (4 * cores)))
    results = pool.map_async(call, range(count), chunksize=chunk).get(timeout=600)
    wall = time.perf_counter() - started
    assert results == list(range(count))
    return wall


def pool_layer_figures(args: argparse.Namespace, cores: int) -> Figures:
    """rhapsody-dragon's FunctionPool alone, fed tasks built beforehand, with no session: the
    Dragon layer's own cost (chunking, per-task results and progress marks) above raw map_async."""
    import threading

    from dragon.native.machine import Node, System

    from rhapsody_dragon.pool import FunctionPool

    ended = threading.Event()
    count = [0, 0]  # reported so far, expected

    def report(updates: list[tuple[rhapsody.Task, str]]) -> None:
        count[0] += len(updates)
        if count[0] >= count[1]:
            ended.set()

    host = Node(System().nodes[0]).hostname
    pool = FunctionPool(report, hosts=[host], workers_per_node=cores, chunk_size=CHUNK, start_timeout=120.0)
    pool.start()
    walls = []
    try:
        for _ in range(args.rounds):
            tasks = [rhapsody.ComputeTask(function=noop, args=(i,)) for i in range(args.tasks)]
            count[:] = [0, args.tasks]
            ended.clear()
            started = time.perf_counter()
            pool.submit(tasks)
            assert ended.wait(600), "the pool did not report every task"
            walls.append(time.perf_counter() - started)
            assert [t["return_value"] for t in tasks] == list(range(args.tasks))
    finally:
        pool.close()
    return Figures("rhapsody-dragon pool layer, no session", args.tasks, walls, [])


def raw_apply_figures(args: argparse.Namespace, cores: int) -> Figures:
    from dragon.native.pool import Pool

    count = min(args.tasks, args.apply_tasks)
    pool = Pool(processes=cores)
    try:
        pool.apply_async(noop, (0,)).get(timeout=120)  # the workers are up
        latencies = [raw_latency(pool, i, 0.0) for i in range(min(args.latency_samples, 50))]
        started = time.perf_counter()
        handles = [pool.apply_async(noop, (i,)) for i in range(count)]
        results = [handle.get(timeout=600) for handle in handles]
        wall = time.perf_counter() - started
        assert results == list(range(count))
    finally:
        pool.close()
        pool.join()
    note = f"  (scaled down from {args.tasks})" if count < args.tasks else ""
    return Figures(f"raw Pool({cores}).apply_async per task", count, [wall], latencies, note)


def raw_batch_figures(args: argparse.Namespace) -> Figures:
    from dragon.workflows.batch import Batch

    batch = Batch(disable_telem=True)
    try:
        batch.function(noop, 0).get()  # the Batch is up
        latencies = []
        for i in range(args.batch_latency_samples):
            started = time.perf_counter()
            batch.function(noop, i).get()
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        handles = [batch.function(noop, i) for i in range(args.batch_tasks)]
        results = [handle.get() for handle in handles]
        wall = time.perf_counter() - started
        assert results == list(range(args.batch_tasks))
    finally:
        batch.join(timeout=120)
    note = (f"  [scaled down from {args.tasks}: raw Batch runs a few tasks/s here]"
            if args.batch_tasks < args.tasks else "")
    return Figures("raw dragon Batch.function", args.batch_tasks, [wall], latencies, note)


def process_pool_figures(args: argparse.Namespace, cores: int) -> Figures:
    env = {key: value for key, value in os.environ.items() if key != "DRAGON_PATCH_MP"}
    env["RHAPSODY_LOAD_PLUGINS"] = ""  # the concurrent backend only: Dragon is not imported
    command = [sys.executable, __file__, "--process-pool-child", "--tasks", str(args.tasks),
               "--rounds", str(args.rounds), "--latency-samples", str(args.latency_samples),
               "--workers", str(cores), "--idle-latency-samples", str(args.idle_latency_samples),
               "--idle-gap", str(args.idle_gap),
               "--work-us"]  # the short-task rounds are compared with raw Dragon only
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the process pool child failed ({done.returncode}):\n{done.stderr}")
    walls, latencies, idle_latencies = json.loads(done.stdout.strip().splitlines()[-1])
    return Figures(f"concurrent + ProcessPoolExecutor({cores})", args.tasks, walls, latencies,
                   idle_latencies=idle_latencies)


def process_pool_child(args: argparse.Namespace) -> int:
    backend = rhapsody.get_backend("concurrent", executor=ProcessPoolExecutor(args.workers))
    figures = asyncio.run(session_figures("process pool", backend, args))
    print(json.dumps([figures.walls, figures.latencies, figures.idle_latencies]))
    return 0


def timed(label: str, run: Callable[[], Figures]) -> Figures:
    print(f"... {label}", flush=True)
    figures = run()
    print(figures.line(), flush=True)
    return figures


def counting(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number, at least ``least``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value
    return parse


def non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    count, more, seconds = counting(1), counting(0), non_negative
    parser.add_argument("--tasks", type=count, default=10_000)
    parser.add_argument("--rounds", type=count, default=3)
    parser.add_argument("--latency-samples", type=count, default=200)
    parser.add_argument("--batch-tasks", type=count, default=200,
                        help="tasks for raw Batch (default 200: it runs a few tasks/s on 2 cores)")
    parser.add_argument("--apply-tasks", type=count, default=2000,
                        help="tasks for the raw per-task apply_async baseline (a few ms each)")
    parser.add_argument("--batch-latency-samples", type=count, default=10)
    parser.add_argument("--idle-latency-samples", type=more, default=20,
                        help="one-task latency samples taken after an idle gap each (default 20)")
    parser.add_argument("--idle-gap", type=seconds, default=0.5,
                        help="seconds of nothing before each of those samples (default 0.5)")
    parser.add_argument("--work-us", type=seconds, nargs="*", default=[100.0, 1000.0],
                        help="short tasks that spin this many microseconds each (default: 100 and 1000)")
    parser.add_argument("--work-tasks", type=count, default=4000, help="tasks per --work-us round (default 4000)")
    parser.add_argument("--workers", type=count, default=os.cpu_count() or 1,
                        help="pool workers on each side (default: the CPUs, as ProcessPoolExecutor)")
    parser.add_argument("--process-pool-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.process_pool_child:
        return process_pool_child(args)
    cores = args.workers

    ours = timed("rhapsody-dragon (worker pool)", lambda: asyncio.run(session_figures(
        "rhapsody-dragon pool", rhapsody.get_backend("dragon", workers_per_node=cores, disable_telemetry=True),
        args)))
    raw_pool = timed("raw Dragon pool", lambda: raw_pool_figures(args, cores))
    layer = timed("rhapsody-dragon's pool layer alone", lambda: pool_layer_figures(args, cores))
    raw_apply = timed("raw Dragon pool, one apply_async per task", lambda: raw_apply_figures(args, cores))
    process_pool = timed("concurrent + ProcessPoolExecutor", lambda: process_pool_figures(args, cores))
    raw_batch = timed("raw Batch", lambda: raw_batch_figures(args))

    p50, _ = percentiles(ours.latencies)
    idle_p50 = percentiles(ours.idle_latencies)[0] if ours.idle_latencies else float("nan")
    print(f"\nmachine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {cores} workers per pool, "
          f"{args.tasks} no-op tasks, best of {args.rounds} round(s)")
    for label, value, target, ok in (
        ("rhapsody-dragon tasks/s / process pool tasks/s", ours.rate / process_pool.rate, ">= 0.5",
         ours.rate / process_pool.rate >= 0.5),
        ("rhapsody-dragon one-task latency p50 (ms)", p50, "<= 10", p50 <= 10),
        ("the same after an idle gap (ms)", idle_p50, "<= 10", idle_p50 <= 10),
        ("rhapsody-dragon wall / raw Dragon pool wall", ours.best / raw_pool.best, "<= 1.10",
         ours.best / raw_pool.best <= 1.10),
        ("pool layer alone (no session) wall / raw pool wall", layer.best / raw_pool.best, "(for reading)", True),
        ("rhapsody-dragon tasks/s / raw apply_async tasks/s", ours.rate / raw_apply.rate, "(for reading)", True),
        ("rhapsody-dragon tasks/s / raw Batch tasks/s", ours.rate / raw_batch.rate, "(for reading)", True),
    ):
        print(f"{label:<50} {value:9.2f}  target {target:<14} {'ok' if ok else 'OVER TARGET'}")
    # What the wall ratio means for no-op tasks: map_async keeps no per-task state, while every
    # rhapsody task is an object with a future and state changes (the core's own cost, measured
    # by bench_core.py's noop line), so the difference per task is printed too.
    print(f"rhapsody-dragon cost above raw map_async per task: "
          f"{1e6 * (ours.best - raw_pool.best) / args.tasks:.1f} us "
          f"(the concurrent backend with ProcessPoolExecutor: {1e6 * process_pool.best / args.tasks:.1f} us "
          "per task in all)")
    building = task_building_wall(args)
    print(f"building the {args.tasks} ComputeTask objects alone: {1e3 * building:.1f} ms "
          f"({1e6 * building / args.tasks:.2f} us per task), {building / raw_pool.best:.2f}x raw map_async's "
          "whole wall: the floor of the wall ratio for any design with one object per task")
    for us, our_walls, raw_walls in zip(args.work_us, ours.work, raw_pool.work):
        ratio = min(our_walls) / min(raw_walls)
        print(f"short tasks, {args.work_tasks} x {us:g} us of work: rhapsody-dragon {min(our_walls):.3f} s, "
              f"raw map_async {min(raw_walls):.3f} s: {ratio:.3f}x  target <= 1.10  "
              f"{'ok' if ratio <= 1.10 else 'OVER TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
