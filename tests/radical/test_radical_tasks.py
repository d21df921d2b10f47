"""RADICAL-Pilot specifics on the module's real local pilot: RP task fields, sizes, Raptor, batching.

All backends here attach to the one pilot of this module (``pilot=``) and must leave it running.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rhapsody
from rhapsody import ComputeTask, Session, TaskExecutionError, WorkerLostError
from rhapsody.testing import workloads
from rhapsody_radical import RadicalBackend

rp = pytest.importorskip("radical.pilot")

STEP = 240.0  # bound on any one await here: RP on a loaded 2-core machine is slow, never hung


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def session(rp_pilot: Any, loop: asyncio.AbstractEventLoop) -> Iterator[Session]:
    backend = RadicalBackend(pilot=rp_pilot)
    session = Session(backends=[backend])
    loop.run_until_complete(asyncio.wait_for(session.start(), STEP))
    yield session
    loop.run_until_complete(asyncio.wait_for(session.close(), STEP))
    # What the backend was given is left as it was.
    assert rp_pilot.state == rp.PMGR_ACTIVE


def run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    return loop.run_until_complete(asyncio.wait_for(coro, STEP))


def sh(script: str, **options: Any) -> ComputeTask:
    return ComputeTask(executable="/bin/sh", arguments=["-c", script],
                       task_backend_specific_kwargs=options or None)


async def finish(session: Session, *tasks: ComputeTask) -> list[ComputeTask]:
    await session.submit_tasks(list(tasks))
    return await session.wait_tasks(list(tasks))


# -- RP task description fields ----------------------------------------------------------------

def test_rp_fields_reach_the_task(session: Session, loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    task = sh('echo "$FROM_PRE:$RHAPSODY_V:$RP_TASK_NAME:$RP_CORES_PER_RANK"; pwd',
              pre_exec=["export FROM_PRE=pre"], env={"RHAPSODY_V": "v"},
              cores_per_rank=2, cwd=str(tmp_path))
    run(loop, finish(session, task))
    assert task.state == "DONE", task.exception
    first, where = task.stdout.strip().splitlines()
    # RP exports the task's name (the rhapsody uid) and its core count to the process.
    assert first == f"pre:v:{task.uid}:2"
    assert Path(where).resolve() == tmp_path.resolve()


def test_arguments_and_env_are_literal(session: Session, loop: asyncio.AbstractEventLoop) -> None:
    # RP would expand $ and backquotes in its generated script; rhapsody passes them literally.
    task = ComputeTask(executable="/bin/echo", arguments=["$HOME", "`id`", 'a"b', "c\\d"],
                       task_backend_specific_kwargs={"env": {"LIT": '$X "q" `y` \\z'}})
    probe = sh('printf %s "$LIT"', environment={"LIT": "$HOME"})
    run(loop, finish(session, task, probe))
    assert task.state == "DONE", task.exception
    assert task.stdout.strip() == '$HOME `id` a"b c\\d'
    assert probe.stdout == "$HOME"


def test_pre_exec_failure_is_a_failed_task(session: Session, loop: asyncio.AbstractEventLoop) -> None:
    task = ComputeTask(executable="/bin/true", task_backend_specific_kwargs={"pre_exec": ["false"]})
    run(loop, finish(session, task))
    assert task.state == "FAILED"
    assert isinstance(task.exception, TaskExecutionError)
    assert "pre_exec failed" in task.stderr


@pytest.mark.parametrize(("size", "match"), [
    ({"ranks": 64}, "ranks=64 x cores_per_rank=1 needs more than the pilot has"),
    ({"ranks": 3, "cores_per_rank": 3}, "ranks=3 x cores_per_rank=3 needs more than the pilot has"),
    ({"cores_per_rank": 64}, "cores_per_rank=64 exceeds the 8 cores of a node"),
    ({"gpus_per_rank": 8}, "gpus_per_rank=8 exceeds the 1 GPUs of a node"),
    ({"mem_per_rank": 10**7}, "mem_per_rank=10000000 exceeds"),
])
def test_task_bigger_than_the_pilot_is_refused_at_once(
    session: Session, loop: asyncio.AbstractEventLoop, size: dict[str, int], match: str
) -> None:
    # RP's agent would fail such a task only while nothing else runs in the pilot; with Raptor
    # running it would wait in scheduling forever.
    task = ComputeTask(executable="/bin/true", task_backend_specific_kwargs=size)
    with pytest.raises(ValueError, match="can never run in pilot") as caught:
        run(loop, session.submit_tasks([task]))
    assert match in str(caught.value)
    assert "8 cores, 1 GPUs" in str(caught.value)  # the local pilot's size is in the message
    assert task.state == "NEW" and session.in_flight == 0


def test_task_that_fits_beside_raptor_runs(session: Session, loop: asyncio.AbstractEventLoop) -> None:
    # 8 virtual cores, 2 used by Raptor: a 6-core task fits.
    task = sh('echo "$RP_CORES_PER_RANK"', cores_per_rank=6)
    run(loop, finish(session, task))
    assert (task.state, task.stdout.strip()) == ("DONE", "6"), task.exception


# -- bad input: every message names what is wrong ----------------------------------------------

@pytest.mark.parametrize(("options", "error", "match"), [
    ({"rhapsody_bogus": 1}, ValueError, "unknown task_backend_specific_kwargs key 'rhapsody_bogus'"),
    ({"executable": "/bin/ls"}, ValueError, r"\['executable'\] is set by the radical backend"),
    ({"uid": "x"}, ValueError, r"\['uid'\] is set by the radical backend"),
    ({"timeout": 3}, ValueError, r"use ComputeTask\(timeout=...\)"),
    ({"ranks": "many"}, TypeError, "ranks"),
    ({"env": {"A": 1}}, TypeError, "env must map strings to strings"),
    ({"env": {"A": "1"}, "environment": {"B": "2"}}, ValueError, "sets 'environment' twice"),
    ({"cwd": "/tmp", "sandbox": "/tmp"}, ValueError, "sets 'sandbox' twice"),
    ({"shell": "yes"}, TypeError, r"\['shell'\] must be a bool"),
])
def test_bad_executable_options_are_refused_by_name(
    session: Session, loop: asyncio.AbstractEventLoop, options: dict[str, Any], error: type, match: str
) -> None:
    good = ComputeTask(executable="/bin/true")
    bad = ComputeTask(executable="/bin/true", task_backend_specific_kwargs=options)
    with pytest.raises(error, match=match):
        run(loop, session.submit_tasks([good, bad]))
    assert (good.state, bad.state) == ("NEW", "NEW")  # nothing of the call was submitted
    assert session.in_flight == 0


def test_uncaptured_output_is_refused(session: Session, loop: asyncio.AbstractEventLoop) -> None:
    task = ComputeTask(executable="/bin/true", capture_stdio=False)
    with pytest.raises(ValueError, match="capture_stdio=False is not supported on RADICAL-Pilot"):
        run(loop, session.submit_tasks([task]))
    assert task.state == "NEW" and session.in_flight == 0


def test_function_options_are_refused_by_name(session: Session, loop: asyncio.AbstractEventLoop) -> None:
    task = ComputeTask(function=workloads.square, args=(2,),
                       task_backend_specific_kwargs={"cores_per_rank": 2})
    with pytest.raises(ValueError, match=r"\['cores_per_rank'\] does not apply to function tasks"):
        run(loop, session.submit_tasks([task]))


def test_unpicklable_function_argument_is_refused(session: Session, loop: asyncio.AbstractEventLoop) -> None:
    task = ComputeTask(function=workloads.square, args=(threading.Lock(),))
    with pytest.raises(TypeError, match="cannot be pickled"):
        run(loop, session.submit_tasks([task]))
    assert task.state == "NEW"


# -- functions through Raptor ------------------------------------------------------------------

def _shout(text: str) -> str:
    print(f"said {text}")
    return text.upper()


def test_function_output_and_closure(session: Session, loop: asyncio.AbstractEventLoop) -> None:
    factor = 7
    closure = ComputeTask(function=lambda x: x * factor, args=(6,))
    printing = ComputeTask(function=_shout, args=("hi",))
    run(loop, finish(session, closure, printing))
    assert (closure.state, closure.return_value) == ("DONE", 42)
    assert (printing.return_value, printing.stdout.strip()) == ("HI", "said hi")


def test_function_timeout_fails_with_timeout_error(session: Session, loop: asyncio.AbstractEventLoop) -> None:
    task = ComputeTask(function=workloads.sleep, args=(30,), timeout=1)
    [future] = run(loop, session.submit_tasks([task]))
    with pytest.raises(TimeoutError, match="timeout of 1 s"):
        run(loop, future)
    assert task.state == "FAILED"


def test_cancel_function_task(session: Session, loop: asyncio.AbstractEventLoop) -> None:
    task = ComputeTask(function=workloads.sleep, args=(30,))
    [future] = run(loop, session.submit_tasks([task]))
    assert run(loop, session.cancel_task(task)) is True
    assert task.state == "CANCELED" and future.cancelled()
    # the worker is free again for the next call
    after = ComputeTask(function=workloads.square, args=(5,))
    run(loop, finish(session, after))
    assert after.return_value == 25


@pytest.mark.parametrize(("ending", "code", "said"), [
    ("exit", 3, "exited with code 3"),
    ("signal", -9, "was killed by signal 9 (SIGKILL)"),
])
def test_function_that_ends_its_process_fails_and_frees_the_worker(
        session: Session, loop: asyncio.AbstractEventLoop, ending: str, code: int, said: str) -> None:
    # Lambdas travel by value: the worker needs no test module to run them.
    end = (lambda: os._exit(3)) if ending == "exit" else (lambda: os.kill(os.getpid(), signal.SIGKILL))
    crashed = ComputeTask(function=end, retries=0)
    run(loop, finish(session, crashed))
    assert crashed.state == "FAILED"
    # The call's process died: its worker was lost, which the session could retry.
    assert isinstance(crashed.exception, WorkerLostError)
    assert (crashed.exception.uid, crashed.exception.exit_code) == (crashed.uid, code)
    assert f"its worker (Raptor call process) {said} before the task ended" in str(crashed.exception)
    # The worker's core was given back: the next call runs.
    after = ComputeTask(function=workloads.square, args=(6,))
    run(loop, finish(session, after))
    assert (after.state, after.return_value) == ("DONE", 36)


def test_functions_refused_without_raptor(rp_pilot: Any, loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        async with Session(backends=[RadicalBackend(pilot=rp_pilot, raptor_workers=0)]) as plain:
            task = ComputeTask(function=workloads.square, args=(3,))
            with pytest.raises(ValueError, match="raptor_workers=0"):
                await plain.submit_tasks([task])
            exe = ComputeTask(executable="/bin/echo", arguments=["still works"])
            await plain.submit_tasks([exe])
            await plain.wait_tasks([exe])
            assert exe.stdout.strip() == "still works"

    run(loop, body())
    assert rp_pilot.state == rp.PMGR_ACTIVE


class _FirstRaptorSilent(RadicalBackend):
    """Gives the first Raptor no time to answer, as when its queue announcement goes astray."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.silent_masters: list[str] = []

    def _raptor_probe_timeout(self, attempt: int) -> float:
        if attempt == 0:
            self.silent_masters.append(self._raptor.uid)
            return 0.0
        return super()._raptor_probe_timeout(attempt)


def test_silent_raptor_is_replaced_at_start(rp_pilot: Any, loop: asyncio.AbstractEventLoop) -> None:
    backend = _FirstRaptorSilent(pilot=rp_pilot)

    async def body() -> None:
        async with Session(backends=[backend]) as replaced:
            [silent] = backend.silent_masters
            [old] = backend._tmgr.get_tasks([silent])
            assert old.state == rp.CANCELED
            task = ComputeTask(function=workloads.square, args=(7,))
            await finish(replaced, task)
            assert (task.state, task.return_value) == ("DONE", 49)
            assert backend._raptor.uid != silent

    run(loop, body())
    assert rp_pilot.state == rp.PMGR_ACTIVE


def test_raptor_that_never_answers_fails_start_up(rp_pilot: Any, loop: asyncio.AbstractEventLoop) -> None:
    backend = RadicalBackend(pilot=rp_pilot, raptor_startup_timeout=0.001)
    with pytest.raises(RuntimeError) as caught:
        run(loop, backend._ensure_initialized())
    message = str(caught.value)
    assert "Raptor did not run its probe call in any of 2 attempts" in message
    assert "attempt 1: " in message and "attempt 2: " in message
    assert "raptor_startup_timeout" in message and "raptor_workers=0" in message
    # Where to look next: the sandboxes of the last attempt's master and worker.
    parts = re.findall(r"^(raptor\.[\d.]+) sandbox: ", message, re.MULTILINE)
    assert len(parts) == 2 and parts[1].startswith(parts[0] + "."), message
    # The pilot is not the backend's: it keeps running, free for the next backend.
    assert rp_pilot.state == rp.PMGR_ACTIVE


@pytest.mark.parametrize("value", [0, -1.0, "60", True])
def test_bad_raptor_startup_timeout_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="raptor_startup_timeout must be > 0"):
        RadicalBackend(raptor_startup_timeout=value)


# -- state hand-over ---------------------------------------------------------------------------

def test_states_arrive_batched_from_rp_threads(session: Session, loop: asyncio.AbstractEventLoop) -> None:
    backend = session.backends["radical"]
    calls: list[tuple[str, list[str]]] = []
    original = backend.report

    def spy(updates: Any) -> None:
        calls.append((threading.current_thread().name, [state for _, state in updates]))
        original(updates)

    backend.report = spy  # type: ignore[method-assign]
    try:
        tasks = [ComputeTask(executable="/bin/true") for _ in range(40)]
        run(loop, finish(session, *tasks))
    finally:
        del backend.report
    assert [t.state for t in tasks] == ["DONE"] * 40
    reported = [state for _, states in calls for state in states]
    assert reported.count("DONE") == 40 and "RUNNING" in reported
    # RP's subscriber thread calls report, one call per state message, never once per update.
    assert all(name != threading.main_thread().name for name, _ in calls)
    assert len(calls) < len(reported)


def test_tasks_pickle_after_running(session: Session, loop: asyncio.AbstractEventLoop) -> None:
    task = ComputeTask(executable="/bin/echo", arguments=["x"])
    run(loop, finish(session, task))
    copy = pickle.loads(pickle.dumps(task))
    assert (copy.state, copy.stdout) == ("DONE", "x\n")


def test_get_backend_by_name_knows_radical() -> None:
    info = rhapsody.discover_backends()["radical"]
    assert info.available and info.backend_class is RadicalBackend
