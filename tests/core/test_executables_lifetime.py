"""Every process of an executable task ends with it, and the task ends with its program.

Real subprocesses: each script records the pids it starts in a file, and the tests check with
psutil that they are gone. Every wait is bounded; nothing asserts how long something took.
"""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import signal
import sys
from collections.abc import Awaitable, Iterator

import psutil
import pytest

from rhapsody import ComputeTask, Session
from rhapsody.builtin.concurrent import ConcurrentBackend

NO_HANG = 60.0
GONE_WITHIN = 15.0


@pytest.fixture
def started() -> Iterator[list[psutil.Process]]:
    """The processes a test saw its tasks start: any still alive at teardown is killed."""
    processes: list[psutil.Process] = []
    yield processes
    for process in processes:
        try:
            process.kill()  # psutil refuses if the pid now belongs to another process
        except psutil.Error:
            pass


def session() -> Session:
    return Session(backends=[ConcurrentBackend(max_subprocesses=4)])


def shell(script: str, **kwargs: object) -> ComputeTask:
    return ComputeTask(executable="/bin/sh", arguments=["-c", script], **kwargs)


async def bounded(body: Awaitable[None]) -> None:
    await asyncio.wait_for(body, NO_HANG)


async def read_pids(path: pathlib.Path, into: list[psutil.Process]) -> list[psutil.Process | None]:
    """The processes whose pids a script wrote on one line of ``path`` (None: already gone)."""
    while True:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            break
        await asyncio.sleep(0.02)
    processes: list[psutil.Process | None] = []
    for pid in text.split():
        try:
            processes.append(psutil.Process(int(pid)))
        except psutil.NoSuchProcess:
            processes.append(None)
    into.extend(process for process in processes if process is not None)
    return processes


def gone(process: psutil.Process | None) -> bool:
    if process is None:
        return True
    try:
        # A zombie waits only for its new parent's wait(): it runs no more.
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def until_gone(process: psutil.Process | None) -> None:
    if process is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GONE_WITHIN
    while not gone(process):
        if loop.time() > deadline:
            raise AssertionError(f"process {process.pid} started by the task is still alive")
        await asyncio.sleep(0.05)


# -- the program exits, a child it started in the background runs on -------------------------

@pytest.mark.parametrize("prefix", ["", "trap '' TERM; "], ids=["plain", "child-ignores-sigterm"])
async def test_background_child_holding_the_pipe_ends_with_the_task(
    tmp_path: pathlib.Path, started: list[psutil.Process], prefix: str
) -> None:
    pids = tmp_path / "pids"

    async def body() -> None:
        async with session() as s:
            task = shell(f"{prefix}sleep 300 & echo $! > {pids}; echo started")
            await s.submit_tasks([task])
            await s.wait_tasks([task], timeout=NO_HANG)
            assert task.state == "DONE", task.stderr
            assert task.stdout == "started\n"
            assert task.exit_code == 0
            [child] = await read_pids(pids, started)
            await until_gone(child)

    await bounded(body())


async def test_failing_program_with_a_background_child(
    tmp_path: pathlib.Path, started: list[psutil.Process]
) -> None:
    pids = tmp_path / "pids"

    async def body() -> None:
        async with session() as s:
            task = shell(f"sleep 300 & echo $! > {pids}; echo out; echo err >&2; exit 3")
            await s.submit_tasks([task])
            await s.wait_tasks([task], timeout=NO_HANG)
            assert task.state == "FAILED"
            assert task.exit_code == 3
            assert (task.stdout, task.stderr) == ("out\n", "err\n")
            [child] = await read_pids(pids, started)
            await until_gone(child)

    await bounded(body())


async def test_cancel_after_the_program_exited_while_its_child_runs(
    tmp_path: pathlib.Path, started: list[psutil.Process]
) -> None:
    pids = tmp_path / "pids"

    async def body() -> None:
        async with session() as s:
            task = shell(f"sleep 300 & echo $$ $! > {pids}; echo started")
            await s.submit_tasks([task])
            program, child = await read_pids(pids, started)
            await until_gone(program)
            # Whether the backend has seen the exit yet is a race; either way nothing survives.
            canceled = await s.cancel_task(task)
            assert task.state == ("CANCELED" if canceled else "DONE")
            await until_gone(child)

    await bounded(body())


async def test_close_after_the_program_exited_while_its_child_runs(
    tmp_path: pathlib.Path, started: list[psutil.Process]
) -> None:
    pids = tmp_path / "pids"

    async def body() -> tuple[ComputeTask, psutil.Process | None]:
        async with session() as s:
            task = shell(f"sleep 300 & echo $$ $! > {pids}; echo started")
            await s.submit_tasks([task])
            program, child = await read_pids(pids, started)
            await until_gone(program)
        return task, child

    task, child = await asyncio.wait_for(body(), NO_HANG)
    assert task.state in ("DONE", "CANCELED")
    await until_gone(child)


# -- timeout -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("prefix", "exit_code"), [("", None), ("trap '' TERM; ", -signal.SIGKILL)],
                         ids=["plain", "group-ignores-sigterm"])
async def test_timeout_kills_the_whole_group(
    tmp_path: pathlib.Path, started: list[psutil.Process], prefix: str, exit_code: int | None
) -> None:
    pids = tmp_path / "pids"

    async def body() -> None:
        async with session() as s:
            task = shell(f"{prefix}sleep 300 & echo $! > {pids}; wait", timeout=1)
            await s.submit_tasks([task])
            await s.wait_tasks([task], timeout=NO_HANG)
            assert task.state == "FAILED"
            assert isinstance(task.exception, TimeoutError)
            assert task.exit_code is not None
            if exit_code is not None:  # it ignored SIGTERM, so SIGKILL after the grace period
                assert task.exit_code == exit_code
            [child] = await read_pids(pids, started)
            await until_gone(child)

    await bounded(body())


# -- reading stays bounded, and complete for normal programs ----------------------------------

@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs setsid(1)")
async def test_a_child_that_left_the_group_does_not_hold_the_task(
    tmp_path: pathlib.Path, started: list[psutil.Process]
) -> None:
    pids = tmp_path / "pids"

    async def body() -> None:
        async with session() as s:
            # The escapee keeps the task's stdout and stderr open in a session of its own. Its
            # pid file exists once it has left the group, so the program waits for that first.
            task = shell(f"setsid sh -c 'echo $$ > {pids}; exec sleep 300' & "
                         f"while [ ! -e {pids} ]; do sleep 0.01; done; echo started")
            await s.submit_tasks([task])
            await s.wait_tasks([task], timeout=NO_HANG)
            assert task.state == "DONE", task.stderr
            assert task.stdout == "started\n"
            [escapee] = await read_pids(pids, started)
            # Out of the group, it is out of the backend's reach: the fixture kills it.
            assert not gone(escapee)

    await bounded(body())


async def test_output_is_complete() -> None:
    write = ("import sys\n"
             "sys.stdout.write('o' * 1_000_000 + '\\n'); sys.stderr.write('e' * 700_000 + '\\n')")

    async def body() -> None:
        async with session() as s:
            big = ComputeTask(executable=sys.executable, arguments=["-c", write])
            # Programs that exit at once: their exit must not overtake the last of their output.
            quick = [shell(f"echo {n}; echo {n} >&2") for n in range(40)]
            await s.submit_tasks([big, *quick])
            await s.wait_tasks([big, *quick], timeout=NO_HANG)
            assert big.state == "DONE", big.stderr[-500:]
            assert big.stdout == "o" * 1_000_000 + "\n"
            assert big.stderr == "e" * 700_000 + "\n"
            assert [(t.state, t.stdout, t.stderr) for t in quick] == [
                ("DONE", f"{n}\n", f"{n}\n") for n in range(40)
            ]

    await bounded(body())
