"""rhapsody-dask against raw Dask on the same cluster, in the same run.

N no-op function tasks go (a) through ``client.map`` + ``client.gather``, (b) through
``client.submit`` per task + ``client.gather``, and (c) through a rhapsody ``Session`` with the
``dask`` backend bound to the same client (task creation, submit, every result back on the task).
Rounds alternate the three so that load changes on a shared machine hit them alike; the best
round of each is compared. Prints wall times, tasks/s and the ratios rhapsody / raw.

    python benchmarks/bench_dask.py [--tasks 10000] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import distributed

import rhapsody
from rhapsody_dask import DaskBackend


def noop(x: int) -> int:
    return x


def raw_map(client: distributed.Client, n: int) -> float:
    start = time.perf_counter()
    futures = client.map(noop, range(n), pure=False)
    results = client.gather(futures)
    wall = time.perf_counter() - start
    assert results == list(range(n))
    del futures
    return wall


def raw_submit(client: distributed.Client, n: int) -> float:
    start = time.perf_counter()
    futures = [client.submit(noop, i, pure=False) for i in range(n)]
    results = client.gather(futures)
    wall = time.perf_counter() - start
    assert results == list(range(n))
    del futures
    return wall


async def through_rhapsody(session: rhapsody.Session, n: int) -> float:
    start = time.perf_counter()
    tasks = [rhapsody.ComputeTask(function=noop, args=(i,)) for i in range(n)]
    await session.submit_tasks(tasks)
    await session.wait_tasks(tasks)
    wall = time.perf_counter() - start
    assert all(t.state == "DONE" for t in tasks)
    assert [t.return_value for t in tasks] == list(range(n))
    return wall


async def main(n: int, rounds: int, workers: int) -> None:
    with distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(workers)
        # Warm both paths once (imports, connections) with a small run.
        raw_map(client, 200)
        backend = DaskBackend(client=client)
        async with rhapsody.Session(backends=[backend]) as session:
            await through_rhapsody(session, 200)
            walls: dict[str, list[float]] = {"map": [], "submit": [], "rhapsody": []}
            for r in range(rounds):
                walls["map"].append(raw_map(client, n))
                walls["rhapsody"].append(await through_rhapsody(session, n))
                walls["submit"].append(raw_submit(client, n))
                print(f"round {r + 1}: " + ", ".join(
                    f"{name} {w[-1]:.2f} s" for name, w in walls.items()), flush=True)
    best = {name: min(w) for name, w in walls.items()}
    print(f"\n{n} no-op tasks, {workers} workers x 1 thread, best of {rounds} rounds")
    for name, wall in best.items():
        print(f"  {name:9s} {wall:7.2f} s  {n / wall:8.0f} tasks/s")
    print(f"wall ratio rhapsody/client.map    = {best['rhapsody'] / best['map']:.3f}")
    print(f"wall ratio rhapsody/client.submit = {best['rhapsody'] / best['submit']:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.rounds, args.workers))
