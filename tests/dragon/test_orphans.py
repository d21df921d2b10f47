"""A Dragon runtime killed without a shutdown leaves no rhapsody pool worker running.

Runs outside any runtime (plain pytest, like test_options.py): it starts a runtime of its own
under the ``dragon`` launcher, with a program that opens a session on the worker pool, then
SIGKILLs the launcher and the program, as a job killed in a hurry would be (one worker running a
task then, the other idle), and watches the pool workers leave. (What Dragon started itself, e.g. its ProcessGroup manager, is Dragon's: the
test's clean-up kills the runtime's process group and removes its /dev/shm pools.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dragon_run import clean_up, dragon_pools, launcher

pytestmark = pytest.mark.skipif(launcher() is None, reason="no `dragon` launcher installed next to this Python")

PROGRAM = """
import asyncio, json, os, sys, time
import rhapsody

def spin(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass

async def main():
    backend = rhapsody.get_backend("dragon", workers_per_node=2, disable_telemetry=True)
    async with rhapsody.Session(backends=[backend]) as session:
        # One worker busy with a task when the runtime is killed, the other idle.
        await session.submit_tasks([rhapsody.ComputeTask(function=spin, args=(3.0,))])
        await asyncio.sleep(0.5)
        pids = [slot.pid for slot in backend._pool._slots.values()]
        with open(sys.argv[1] + ".part", "w") as file:
            json.dump({"program": os.getpid(), "workers": pids}, file)
        os.rename(sys.argv[1] + ".part", sys.argv[1])
        time.sleep(600)

asyncio.run(main())
"""


def _state(pid: int) -> str:
    """The process's state letter from /proc (``Z``: exited, not reaped yet), or ``gone``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def test_pool_workers_leave_when_the_runtime_is_killed(tmp_path: Path) -> None:
    program, pids_file = tmp_path / "program.py", tmp_path / "pids.json"
    program.write_text(PROGRAM)
    pools, orchestrator_files = dragon_pools(), set(Path.cwd().glob("ddict_orc_*"))
    runtime = subprocess.Popen([launcher(), sys.executable, str(program), str(pids_file)],  # type: ignore[list-item]
                               preexec_fn=os.setpgrp, stdout=subprocess.DEVNULL,  # noqa: PLW1509
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not pids_file.exists():
            assert runtime.poll() is None, f"the runtime ended early ({runtime.returncode})"
            assert time.monotonic() < deadline, "the program did not start its session within 180 s"
            time.sleep(0.5)
        started = json.loads(pids_file.read_text())
        workers = started["workers"]
        assert len(workers) == 2 and all(_state(pid) not in ("gone", "Z") for pid in workers)

        os.kill(runtime.pid, signal.SIGKILL)
        os.kill(started["program"], signal.SIGKILL)
        runtime.wait(timeout=30)
        # A worker looks for its parent between tasks and each time its queue wait ends (every
        # 5 s when idle): the busy one leaves once its 3 s task is over.
        deadline = time.monotonic() + 30
        running = workers
        while running and time.monotonic() < deadline:
            time.sleep(0.2)
            running = [pid for pid in workers if _state(pid) not in ("gone", "Z")]
        assert not running, f"pool workers {running} still run 30 s after their runtime was killed"
    finally:
        clean_up(runtime.pid, pools, orchestrator_files)
