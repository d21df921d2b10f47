"""A Dragon runtime killed without a shutdown leaves no rhapsody pool worker running.

Runs outside any runtime (plain pytest, like test_options.py): it starts a runtime of its own
under the ``dragon`` launcher, with a program that opens a session on the worker pool, then
kills it (SIGKILL to the launcher and the program, as a job killed in a hurry; or SIGINT to the
whole process group, as Ctrl-C in a terminal) while one worker runs a task and the other is idle,
and watches the pool workers leave. The directories the killed client could not
remove are removed by the next client on the node (rhapsody_dragon.leftovers). (What Dragon started itself, e.g. its ProcessGroup manager, is Dragon's: the
test's clean-up kills the runtime's process group and removes its /dev/shm pools.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from dragon_run import clean_up, dragon_pools, launcher

from rhapsody_dragon.leftovers import remove_stale

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
        await asyncio.sleep(600)

asyncio.run(main())
"""


def _state(pid: int) -> str:
    """The process's state letter from /proc (``Z``: exited, not reaped yet), or ``gone``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def _still_running(pids: list[int], patience: float) -> list[int]:
    """Those of ``pids`` still running after up to ``patience`` seconds."""
    deadline = time.monotonic() + patience
    running = [pid for pid in pids if _state(pid) not in ("gone", "Z")]
    while running and time.monotonic() < deadline:
        time.sleep(0.2)
        running = [pid for pid in running if _state(pid) not in ("gone", "Z")]
    return running


def _kill(runtime: subprocess.Popen[bytes], program: int, how: str) -> None:
    if how == "sigkill":
        # A job killed in a hurry: the launcher and the program, nothing else.
        os.kill(runtime.pid, signal.SIGKILL)
        os.kill(program, signal.SIGKILL)
    else:
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
        os.killpg(runtime.pid, signal.SIGINT)


@pytest.mark.parametrize("how", ["sigkill", "ctrl-c"])
def test_pool_workers_leave_when_the_runtime_is_killed(tmp_path: Path, how: str) -> None:
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

        _kill(runtime, started["program"], how)
        runtime.wait(timeout=60)
        # A worker looks for its parent between tasks and each time its queue wait ends (every
        # 5 s when idle): the busy one leaves once its 3 s task is over.
        assert not _still_running(workers, 30.0), f"pool workers still run 30 s after the runtime was killed ({how})"
        if _still_running([started["program"]], 5.0):
            # Ctrl-C: the launcher's teardown did not end the program in every run under pytest
            # (it did in four of four runs from a plain script); why is open (docs/backends/
            # dragon.md). Ended here, as the end of a batch job would.
            assert how == "ctrl-c", "a SIGKILLed program still runs"
            os.kill(started["program"], signal.SIGKILL)
            assert not _still_running([started["program"]], 10.0)

        # What the killed client could not remove, the next client on the node does.
        mine = f"rhapsody-dragon-{socket.gethostname()}-{started['program']}-"
        bases = [Path("/dev/shm"), Path(tempfile.gettempdir())]
        for base in bases:
            remove_stale(base)
        assert not [path for base in bases for path in base.glob(f"{mine}*")]
    finally:
        clean_up(runtime.pid, pools, orchestrator_files)
