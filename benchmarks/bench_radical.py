"""rhapsody-radical against the bare RADICAL-Pilot API: same pilot, same workload, same run.

    python benchmarks/bench_radical.py [--tasks 200] [--repeats 3] [--functions 0]

One local.localhost pilot is started; then, alternating, the bare RP API (a TaskManager whose
state callback counts finals and sets an event at the last one) and a rhapsody Session over
``RadicalBackend(pilot=...)`` run the same ``/bin/true`` tasks. The best wall time of each side is
compared: ``ratio = rhapsody / bare`` (target <= 1.10). With ``--functions N`` both sides also run
N Python function tasks through a Raptor master with one worker.

Needs an activated venv with radical.pilot (or it activates this interpreter's venv itself).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import radical.pilot as rp  # noqa: I001 - RP wants to be imported before logging is configured

import rhapsody
from rhapsody_radical import RadicalBackend
from rhapsody_radical.pilot import ensure_rp_environment, local_path, wait_for_session_processes


def square(x: int) -> int:
    return x * x


def bare_executables(tmgr: Any, n: int) -> float:
    done = threading.Event()
    count = [0]
    lock = threading.Lock()

    def on_state(task: Any, state: str) -> None:
        if state in rp.FINAL:
            with lock:
                count[0] += 1
                if count[0] == n:
                    done.set()

    tmgr.register_callback(on_state)
    try:
        started = time.perf_counter()
        descriptions = [rp.TaskDescription({"executable": "/bin/true"}) for _ in range(n)]
        tasks = tmgr.submit_tasks(descriptions)
        if not done.wait(600):
            raise RuntimeError("bare RP run did not finish in 600 s")
        wall = time.perf_counter() - started
    finally:
        tmgr.unregister_callback(on_state)
    assert all(t.state == rp.DONE for t in tasks), {t.state for t in tasks}
    return wall


def bare_functions(tmgr: Any, raptor: Any, n: int) -> float:
    started = time.perf_counter()
    descriptions = [rp.TaskDescription({"mode": rp.TASK_FUNCTION,
                                        "function": rp.PythonTask(square, (i,), {})})
                    for i in range(n)]
    tasks = raptor.submit_tasks(descriptions)
    tmgr.wait_tasks(uids=[t.uid for t in tasks], timeout=600)
    wall = time.perf_counter() - started
    assert all(t.state == rp.DONE for t in tasks), {t.state for t in tasks}
    return wall


async def rhapsody_executables(session: rhapsody.Session, n: int) -> float:
    tasks = [rhapsody.ComputeTask(executable="/bin/true") for _ in range(n)]
    started = time.perf_counter()
    await session.submit_tasks(tasks)
    await session.wait_tasks(tasks)
    wall = time.perf_counter() - started
    assert all(t.state == "DONE" for t in tasks), {t.state for t in tasks}
    return wall


async def rhapsody_functions(session: rhapsody.Session, n: int) -> float:
    calls = [rhapsody.ComputeTask(function=square, args=(i,)) for i in range(n)]
    started = time.perf_counter()
    await session.submit_tasks(calls)
    await session.wait_tasks(calls)
    wall = time.perf_counter() - started
    assert [t.return_value for t in calls] == [i * i for i in range(n)]
    return wall


async def compare(pilot: Any, tmgr: Any, args: argparse.Namespace) -> None:
    # Both sides warm (TaskManager components up, the pilot's scheduler knows the TaskManager)
    # before anything is timed; then they alternate on the same pilot.
    backend = RadicalBackend(pilot=pilot, raptor_workers=1 if args.functions else 0)
    async with rhapsody.Session(backends=[backend]) as session:
        bare_executables(tmgr, 10)
        await rhapsody_executables(session, 10)
        bare, ours = [], []
        for _ in range(args.repeats):
            bare.append(bare_executables(tmgr, args.tasks))
            ours.append(await rhapsody_executables(session, args.tasks))
        b, o = min(bare), min(ours)
        paired = sorted(x / y for x, y in zip(ours, bare))
        print(f"executables: {args.tasks} x /bin/true, best of {args.repeats}")
        print(f"  bare RP API      : {b:7.2f} s  {args.tasks / b:7.1f} tasks/s  (all: {', '.join(f'{x:.2f}' for x in bare)})")
        print(f"  rhapsody-radical : {o:7.2f} s  {args.tasks / o:7.1f} tasks/s  (all: {', '.join(f'{x:.2f}' for x in ours)})")
        print(f"  wall ratio rhapsody/bare = {o / b:.3f}  (target <= 1.10); "
              f"median of paired runs {paired[len(paired) // 2]:.3f}")
        if args.functions:
            # The bare side gets its own Raptor master and worker, like the backend's.
            raptor = tmgr.submit_raptors([rp.TaskDescription({"mode": rp.RAPTOR_MASTER})],
                                         pilot_id=pilot.uid)[0]
            raptor.submit_workers([rp.TaskDescription({"mode": rp.RAPTOR_WORKER, "ranks": 1})])
            bare_functions(tmgr, raptor, 2)
            await rhapsody_functions(session, 2)
            bare_f, ours_f = [], []
            for _ in range(args.repeats):
                bare_f.append(bare_functions(tmgr, raptor, args.functions))
                ours_f.append(await rhapsody_functions(session, args.functions))
            b, o = min(bare_f), min(ours_f)
            paired = sorted(x / y for x, y in zip(ours_f, bare_f))
            print(f"functions: {args.functions} x square via Raptor (1 worker each), best of {args.repeats}")
            print(f"  bare RP API      : {b:7.2f} s  {args.functions / b:7.1f} tasks/s  (all: {', '.join(f'{x:.2f}' for x in bare_f)})")
            print(f"  rhapsody-radical : {o:7.2f} s  {args.functions / o:7.1f} tasks/s  (all: {', '.join(f'{x:.2f}' for x in ours_f)})")
            print(f"  wall ratio rhapsody/bare = {o / b:.3f}; median of paired runs {paired[len(paired) // 2]:.3f}")
            tmgr.cancel_tasks([raptor.uid])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--functions", type=int, default=0)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()

    ensure_rp_environment(activate_venv=True)
    base = Path("bench-radical-client").resolve()
    started = time.perf_counter()
    session = rp.Session(cfg={"base": str(base)})
    sandbox = scratch = None
    try:
        pmgr = rp.PilotManager(session=session)
        pilot = pmgr.submit_pilots(rp.PilotDescription(
            {"resource": "local.localhost", "cores": args.cores, "runtime": 60, "exit_on_error": False}))
        pilot.wait(state=[rp.PMGR_ACTIVE, *rp.FINAL], timeout=600)
        if pilot.state != rp.PMGR_ACTIVE:
            raise SystemExit(f"pilot did not start: {pilot.state}")
        sandbox = local_path(pilot.session_sandbox)
        scratch = Path(pilot.resource_details["lfs_path"]) / session.uid
        startup = time.perf_counter() - started
        tmgr = rp.TaskManager(session=session)
        tmgr.add_pilots(pilot.as_dict())  # as the backend does: the pilot stays free for it

        print(f"pilot start-up (session + pilot active): {startup:.1f} s")
        asyncio.run(compare(pilot, tmgr, args))
    finally:
        session.close(terminate=True, download=False)
        wait_for_session_processes(session.uid, 30)  # they write into the sandbox on their way out
        for path in (sandbox, scratch, base):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
