"""rhapsody-dask against raw Dask on the same cluster, in the same run.

N no-op function tasks go (a) through ``client.map`` + ``client.gather``, (b) through
``client.submit`` per task + ``client.gather``, and (c) through a rhapsody ``Session`` with the
``dask`` backend given the same cluster (task creation, submit, every result back on the task).
Rounds rotate the order of the three so that load changes on a shared machine hit them alike,
and each run starts once the scheduler has forgotten the previous run's tasks; the best round of
each is compared. Prints wall times, tasks/s and the ratios rhapsody / raw, plus the CPU
time of this process (scheduler, client and rhapsody; the workers are other processes), which a
busy shared machine disturbs much less than wall time.

    python benchmarks/bench_dask.py [--tasks 10000] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

import distributed

import rhapsody
from rhapsody_dask import DaskBackend


def noop(x: int) -> int:
    return x


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process)


def _since(start: Timing) -> Timing:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def _now() -> Timing:
    return time.perf_counter(), time.process_time()


def raw_map(client: distributed.Client, n: int) -> Timing:
    start = _now()
    futures = client.map(noop, range(n), pure=False)
    results = client.gather(futures)
    spent = _since(start)
    assert results == list(range(n))
    del futures
    return spent


def raw_submit(client: distributed.Client, n: int) -> Timing:
    start = _now()
    futures = [client.submit(noop, i, pure=False) for i in range(n)]
    results = client.gather(futures)
    spent = _since(start)
    assert results == list(range(n))
    del futures
    return spent


async def through_rhapsody(session: rhapsody.Session, n: int) -> Timing:
    start = _now()
    tasks = [rhapsody.ComputeTask(function=noop, args=(i,)) for i in range(n)]
    await session.submit_tasks(tasks)
    await session.wait_tasks(tasks)
    spent = _since(start)
    assert all(t.state == "DONE" for t in tasks)
    assert [t.return_value for t in tasks] == list(range(n))
    return spent


def settle(client: distributed.Client) -> None:
    """Wait until the scheduler holds no task of an earlier run (bounded), then collect garbage."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0:
            break
        time.sleep(0.2)
    gc.collect()


async def main(n: int, rounds: int, workers: int) -> None:
    with distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(workers)
        # Warm both paths once (imports, connections) with a small run.
        raw_map(client, 200)
        backend = DaskBackend(cluster=cluster)  # its own client, on the same cluster
        async with rhapsody.Session(backends=[backend]) as session:
            await through_rhapsody(session, 200)
            runs: dict[str, list[Timing]] = {"map": [], "submit": [], "rhapsody": []}
            order = ["map", "rhapsody", "submit"]
            for r in range(rounds):
                for name in order[r % 3:] + order[:r % 3]:
                    settle(client)
                    if name == "map":
                        runs["map"].append(raw_map(client, n))
                    elif name == "submit":
                        runs["submit"].append(raw_submit(client, n))
                    else:
                        runs["rhapsody"].append(await through_rhapsody(session, n))
                print(f"round {r + 1}: " + ", ".join(
                    f"{name} {t[-1][0]:.2f} s (cpu {t[-1][1]:.2f} s)" for name, t in runs.items()),
                    flush=True)
    wall = {name: min(t[0] for t in timings) for name, timings in runs.items()}
    cpu = {name: min(t[1] for t in timings) for name, timings in runs.items()}
    print(f"\n{n} no-op tasks, {workers} workers x 1 thread, best of {rounds} rounds")
    for name in runs:
        print(f"  {name:9s} wall {wall[name]:7.2f} s  {n / wall[name]:8.0f} tasks/s   "
              f"cpu here {cpu[name]:7.2f} s")
    for raw, label in (("map", "client.map   "), ("submit", "client.submit")):
        print(f"ratio rhapsody/{label}: wall {wall['rhapsody'] / wall[raw]:.3f}   "
              f"cpu {cpu['rhapsody'] / cpu[raw]:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.rounds, args.workers))
