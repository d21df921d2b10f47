"""Session: routing, submission rules, futures, waiting, closing, memory, foreign-thread reports."""

from __future__ import annotations

import asyncio
import gc
import pathlib
import pickle
import threading
import weakref
from collections.abc import Sequence

import psutil
import pytest
from backends_for_tests import FailingShutdownBackend, RecordingBackend, StuckBackend, ThreadedBackend
from kept_tasks import TrackedTask, still_alive

import rhapsody
from rhapsody import (
    AITask,
    BackendUnavailableError,
    ComputeTask,
    Session,
    SessionClosedError,
    Task,
    TaskExecutionError,
)
from rhapsody.builtin.concurrent import ConcurrentBackend
from rhapsody.builtin.noop import NoopBackend
from rhapsody.testing import workloads

# Generous bounds that only prove "no hang"; nothing here measures speed.
NO_HANG = 60.0


def shell(script: str, **kwargs: object) -> ComputeTask:
    return ComputeTask(executable="/bin/sh", arguments=["-c", script], **kwargs)  # type: ignore[arg-type]


async def read_pid(path: pathlib.Path) -> int:
    async def poll() -> int:
        while not (path.exists() and path.read_text().strip()):
            await asyncio.sleep(0.02)
        return int(path.read_text())

    return await asyncio.wait_for(poll(), NO_HANG)


async def until_gone(pid: int) -> None:
    async def poll() -> None:
        while True:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), 20)


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}


# -- construction ----------------------------------------------------------------------------


def test_default_backend_is_concurrent() -> None:
    session = Session()
    assert list(session.backends) == ["concurrent"]
    assert isinstance(session.backends["concurrent"], ConcurrentBackend)
    assert session.in_flight == 0


def test_backends_by_name_and_instance() -> None:
    noop = NoopBackend()
    session = Session(backends=[noop, "concurrent"])
    assert session.backends == {"noop": noop, "concurrent": session.backends["concurrent"]}


def test_two_backends_with_one_name() -> None:
    with pytest.raises(ValueError, match=r"Session: two backends are named 'noop'"):
        Session(backends=["noop", NoopBackend()])


def test_not_a_backend() -> None:
    with pytest.raises(TypeError, match=r"Session: 42 is not a backend instance or name"):
        Session(backends=[42])  # type: ignore[list-item]


def test_unknown_backend_name_at_construction() -> None:
    with pytest.raises(BackendUnavailableError, match=r"no backend named 'nosuch' is installed"):
        Session(backends=["nosuch"])


async def test_backend_belongs_to_one_session() -> None:
    backend = NoopBackend()
    async with Session(backends=[backend]):
        other = Session(backends=[backend])
        with pytest.raises(RuntimeError, match=r"backend 'noop' already belongs to another session"):
            await other.start()


async def test_report_before_bind_raises() -> None:
    backend = NoopBackend()
    with pytest.raises(RuntimeError, match=r"backend 'noop' is not attached to a session"):
        backend.report([(ComputeTask(function=workloads.add), "DONE")])


async def test_closed_backend_cannot_be_started() -> None:
    backend = NoopBackend()
    await backend
    await backend.close()
    await backend.close()  # idempotent
    with pytest.raises(RuntimeError, match=r"backend 'noop' has been closed"):
        await backend
    assert "closed" in repr(backend)


# -- routing ---------------------------------------------------------------------------------


async def test_routing_by_backend_field_and_by_kind() -> None:
    async with Session(backends=["noop", "concurrent"]) as session:
        default = ComputeTask(function=workloads.add, args=(2, 3))
        chosen = ComputeTask(function=workloads.add, args=(2, 3), backend="concurrent")
        await session.submit_tasks([default, chosen])
        await session.wait_tasks([default, chosen], timeout=NO_HANG)
    assert (default.backend, default.state, default.return_value) == ("noop", "DONE", None)
    assert (chosen.backend, chosen.state, chosen.return_value) == ("concurrent", "DONE", 5)


async def test_routing_by_kind_picks_the_first_backend_that_runs_it() -> None:
    async with Session(backends=[ThreadedBackend(), "concurrent"]) as session:
        function = ComputeTask(function=workloads.square, args=(4,))
        executable = shell("echo hi")
        await session.submit_tasks([function, executable])
        await session.wait_tasks([function, executable], timeout=NO_HANG)
    assert (function.backend, function.return_value) == ("threaded", 16)
    assert (executable.backend, executable.stdout) == ("concurrent", "hi\n")


async def test_backend_that_does_not_run_the_kind() -> None:
    async with Session(backends=[ThreadedBackend(), "concurrent"]) as session:
        task = shell("true", backend="threaded")
        with pytest.raises(ValueError, match=rf"task {task.uid}: backend 'threaded' does not run "
                                             r"executable tasks \(it runs: function\)"):
            await session.submit_tasks([task])
        assert task.state == "NEW" and task.future is None


async def test_unknown_backend_at_submit_names_it_and_session_keeps_working() -> None:
    async with Session() as session:
        good = ComputeTask(function=workloads.add, args=(1, 1))
        bad = ComputeTask(function=workloads.add, args=(1, 1), backend="dasky")
        with pytest.raises(ValueError, match=rf"task {bad.uid} asks for backend 'dasky', which this "
                                             r"session does not have \(it has: concurrent\)"):
            await session.submit_tasks([good, bad])
        # nothing of that call was submitted
        assert (good.state, good.future, bad.state, bad.future) == ("NEW", None, "NEW", None)
        assert session.in_flight == 0
        [future] = await session.submit_tasks([good])
        assert (await future).return_value == 2


async def test_ai_task_without_an_ai_backend() -> None:
    async with Session() as session:
        task = AITask("hello")
        with pytest.raises(ValueError, match=rf"task {task.uid}: no backend of this session runs ai "
                                             r"tasks \(backends: concurrent\)"):
            await session.submit_tasks([task])
        named = AITask("hello", backend="concurrent")
        with pytest.raises(ValueError, match=r"backend 'concurrent' does not run ai tasks "
                                             r"\(it runs: executable, function\)"):
            await session.submit_tasks([named])
        assert session.in_flight == 0


async def test_ai_task_on_a_backend_that_takes_them() -> None:
    async with Session(backends=["concurrent", "noop"]) as session:
        task = AITask("hello")
        await session.submit_tasks([task])
        await session.wait_tasks([task], timeout=NO_HANG)
    assert (task.backend, task.state) == ("noop", "DONE")


# -- submission rules ------------------------------------------------------------------------


async def test_duplicate_submission() -> None:
    async with Session(backends=["noop"]) as session:
        task = ComputeTask(function=workloads.add)
        await session.submit_tasks([task])
        with pytest.raises(ValueError, match=rf"task {task.uid} has already been submitted; make a new task"):
            await session.submit_tasks([task])


async def test_duplicate_submission_of_a_running_uid() -> None:
    release = threading.Event()
    async with Session(backends=[ThreadedBackend(release=release)]) as session:
        first = ComputeTask(function=workloads.add, args=(1, 2), uid="twin")
        await session.submit_tasks([first])
        second = ComputeTask(function=workloads.add, args=(1, 2), uid="twin")
        with pytest.raises(ValueError, match=r"task uid 'twin' is used twice: by another task in flight"):
            await session.submit_tasks([second])
        assert second.state == "NEW"
        # A refused call undoes only its own tasks: the running one stays in flight.
        fresh = ComputeTask(function=workloads.add, args=(2, 2))
        with pytest.raises(ValueError, match=r"task twin has already been submitted"):
            await session.submit_tasks([fresh, first])
        assert (fresh.state, fresh.future, session.in_flight) == ("NEW", None, 1)
        assert first.future is not None and first.state == "SUBMITTED"
        release.set()
        await session.wait_tasks([first], timeout=NO_HANG)
        assert first.return_value == 3


async def test_duplicate_uid_in_one_call() -> None:
    async with Session(backends=["noop"]) as session:
        a = ComputeTask(function=workloads.add, uid="same")
        b = ComputeTask(function=workloads.add, uid="same")
        with pytest.raises(ValueError, match=r"task uid 'same' is used twice: by another task in flight or earlier in this call"):
            await session.submit_tasks([a, b])
        with pytest.raises(ValueError, match=r"task same has already been submitted; make a new task"):
            await session.submit_tasks([a, a])
        assert (a.state, a.future, b.state, b.future) == ("NEW", None, "NEW", None)
        assert session.in_flight == 0


async def test_submit_rejects_non_tasks() -> None:
    async with Session(backends=["noop"]) as session:
        with pytest.raises(TypeError, match=r"submit_tasks takes tasks, got dict: \{'function': 1\}"):
            await session.submit_tasks([{"function": 1}])  # type: ignore[list-item]


async def test_submit_after_close() -> None:
    session = Session(backends=["noop"])
    await session.start()
    await session.close()
    with pytest.raises(SessionClosedError, match=r"cannot submit to a closed session"):
        await session.submit_tasks([ComputeTask(function=workloads.add)])
    never_started = Session(backends=["noop"])
    await never_started.close()
    with pytest.raises(SessionClosedError, match=r"this session has been closed"):
        await never_started.submit_tasks([ComputeTask(function=workloads.add)])


async def test_backend_refusal_leaves_tasks_new_and_session_working() -> None:
    async with Session() as session:
        bad = shell("true", task_backend_specific_kwargs={"nice": 5})
        with pytest.raises(ValueError, match=r"concurrent does not understand task_backend_specific_kwargs \['nice'\]"):
            await session.submit_tasks([bad])
        assert (bad.state, bad.future, bad.backend) == ("NEW", None, None)  # as it was made
        pinned = shell("true", backend="concurrent", task_backend_specific_kwargs={"nice": 5})
        with pytest.raises(ValueError, match=r"\['nice'\]"):
            await session.submit_tasks([pinned])
        assert (pinned.state, pinned.future, pinned.backend) == ("NEW", None, "concurrent")
        assert session.in_flight == 0
        again = shell("echo again")
        await session.submit_tasks([again])
        await session.wait_tasks([again], timeout=NO_HANG)
        assert again.stdout == "again\n"


async def test_submit_accepts_any_iterable() -> None:
    async with Session(backends=["noop"]) as session:
        tasks = [ComputeTask(function=workloads.add) for _ in range(3)]
        futures = await session.submit_tasks(t for t in tasks)
        assert [f.result() for f in futures] == tasks


# -- futures ---------------------------------------------------------------------------------


async def test_future_raises_the_function_exception_with_its_type() -> None:
    async with Session() as session:
        task = ComputeTask(function=workloads.fail, args=("nope",))
        [future] = await session.submit_tasks([task])
        with pytest.raises(workloads.KitError, match=r"^nope$"):
            await future
        with pytest.raises(workloads.KitError):
            await task
    assert task.state == "FAILED"
    assert isinstance(task.exception, workloads.KitError)


async def test_nonzero_exit_raises_task_execution_error() -> None:
    async with Session() as session:
        task = shell("echo first >&2; echo last words >&2; exit 7")
        [future] = await session.submit_tasks([task])
        with pytest.raises(TaskExecutionError, match=rf"^task {task.uid} failed with exit code 7: last words$") as caught:
            await future
    error = caught.value
    assert (error.uid, error.exit_code, error.stderr) == (task.uid, 7, "first\nlast words\n")
    assert task.exception is error
    assert (task.state, task.exit_code) == ("FAILED", 7)
    copy_ = pickle.loads(pickle.dumps(error))
    assert (copy_.uid, copy_.stderr, copy_.exit_code, str(copy_)) == (error.uid, error.stderr, 7, str(error))


def test_task_execution_error_without_stderr() -> None:
    assert str(TaskExecutionError("t1", "", None)) == "task t1 could not run"


async def test_canceled_task_has_a_cancelled_future() -> None:
    async with Session() as session:
        task = shell("sleep 60")
        [future] = await session.submit_tasks([task])
        assert await session.cancel_task(task) is True
        assert task.state == "CANCELED"
        assert future.cancelled()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert session.in_flight == 0


async def test_function_raising_stop_iteration_fails_instead_of_hanging() -> None:
    # asyncio futures refuse StopIteration; the session must still resolve the future.
    async with Session() as session:
        task = ComputeTask(function=next, args=(iter([]),))
        [future] = await session.submit_tasks([task])
        await session.wait_tasks([task], timeout=NO_HANG)
        assert task.state == "FAILED"
        assert isinstance(task.exception, StopIteration)
        with pytest.raises(RuntimeError, match=rf"task {task.uid} raised StopIteration"):
            await future
        assert session.in_flight == 0


# -- wait ------------------------------------------------------------------------------------


async def test_wait_never_raises_for_failed_tasks() -> None:
    async with Session() as session:
        tasks = [ComputeTask(function=workloads.fail, args=("x",)), shell("exit 2"),
                 ComputeTask(function=workloads.add, args=(1, 2))]
        await session.submit_tasks(tasks)
        assert await session.wait_tasks(tasks, timeout=NO_HANG) == tasks
        assert [t.state for t in tasks] == ["FAILED", "FAILED", "DONE"]
        assert isinstance(tasks[1].exception, TaskExecutionError)
        # waiting again on ended tasks returns at once
        assert await session.wait_tasks(tuple(tasks)) == tasks


async def test_wait_timeout_message_counts() -> None:
    async with Session() as session:
        quick = ComputeTask(function=workloads.add, args=(1, 1))
        slow = [shell("sleep 60"), shell("sleep 60")]
        await session.submit_tasks([quick, *slow])
        await session.wait_tasks([quick], timeout=NO_HANG)
        with pytest.raises(TimeoutError, match=r"^1 of 3 tasks ended within 0.2 s; 2 still running$"):
            await session.wait_tasks([quick, *slow], timeout=0.2)
        assert [t.state for t in slow] == ["SUBMITTED", "SUBMITTED"]  # they keep running
        for task in slow:
            assert await session.cancel_task(task)


async def test_wait_for_a_task_never_submitted() -> None:
    async with Session(backends=["noop"]) as session:
        task = ComputeTask(function=workloads.add, uid="lonely")
        with pytest.raises(ValueError, match=r"task lonely was never submitted to a session"):
            await session.wait_tasks([task])


async def test_wait_returns_when_tasks_end_not_at_its_timeout() -> None:
    release = threading.Event()
    async with Session(backends=[ThreadedBackend(release=release)]) as session:
        tasks = [ComputeTask(function=workloads.add, args=(i, i)) for i in range(5)]
        await session.submit_tasks(tasks)
        threading.Timer(0.2, release.set).start()
        # wait_tasks' own timeout is far beyond the outer bound: returning proves it woke on the end.
        await asyncio.wait_for(session.wait_tasks(tasks, timeout=3600), NO_HANG)
    assert [t.return_value for t in tasks] == [0, 2, 4, 6, 8]


# -- foreign-thread reports ------------------------------------------------------------------


async def test_reports_from_a_foreign_thread_wake_the_loop() -> None:
    backend = ThreadedBackend()
    async with Session(backends=[backend]) as session:
        tasks = [ComputeTask(function=workloads.square, args=(i,)) for i in range(50)]
        await session.submit_tasks(tasks)
        # Nothing else runs on this loop: only the backend's thread-safe wake-up can end this wait.
        await asyncio.wait_for(session.wait_tasks(tasks, timeout=3600), NO_HANG)
        assert [t.return_value for t in tasks] == [i * i for i in range(50)]
        assert backend.receiver_calls == 1  # one report() call from the thread, one hand-over


async def test_many_reports_from_a_thread_coalesce_into_one_wake_up() -> None:
    release = threading.Event()
    backend = ThreadedBackend(per_task_reports=True, release=release)
    async with Session(backends=[backend]) as session:
        tasks = [ComputeTask(function=workloads.square, args=(i,)) for i in range(500)]
        await session.submit_tasks(tasks)
        release.set()
        # Block the loop until the thread has made all 500 report() calls: they must be queued
        # behind a single wake-up.
        assert backend.reported.wait(NO_HANG)
        await session.wait_tasks(tasks, timeout=NO_HANG)
        assert backend.receiver_calls == 1
        assert all(t.state == "DONE" for t in tasks)
        assert session.in_flight == 0


async def test_report_on_the_loop_thread_applies_at_once() -> None:
    async with Session(backends=["noop"]) as session:
        tasks = [ComputeTask(function=workloads.add) for _ in range(3)]
        futures = await session.submit_tasks(tasks)
        # noop reports from inside submit_tasks, on the loop thread: no loop turn needed
        assert all(f.done() for f in futures)
        assert session.in_flight == 0


async def test_intermediate_states_are_applied_and_late_reports_ignored() -> None:
    backend = StuckBackend(hang=False)
    async with Session(backends=[backend]) as session:
        task = ComputeTask(function=workloads.add)
        [future] = await session.submit_tasks([task])
        backend.report([(task, "RUNNING")])
        assert task.state == "RUNNING" and not future.done()
        task.return_value = 1
        backend.report([(task, "DONE")])
        assert task.state == "DONE" and future.result() is task
        backend.report([(task, "FAILED"), (task, "RUNNING")])  # too late: ignored
        assert task.state == "DONE"


async def test_report_all_from_a_thread_keeps_order_with_report_and_copies_its_list() -> None:
    backend = StuckBackend(hang=False)
    calls: list[tuple[int, str | None]] = []
    async with Session(backends=[backend]) as session:
        receive = backend._receiver
        assert receive is not None

        def counting(items: object, state: str | None) -> None:
            calls.append((len(items), state))  # type: ignore[arg-type]
            receive(items, state)

        backend._receiver = counting
        tasks = [ComputeTask(function=workloads.add) for _ in range(3)]
        futures = await session.submit_tasks(tasks)

        def engine() -> None:
            backend.report([(tasks[0], "RUNNING")])
            backend.report([(tasks[1], "RUNNING")])  # joins the waiting batch above
            sweep = [tasks[0], tasks[1]]
            backend.report_all(sweep, "DONE")
            sweep.clear()  # the backend reuses its buffer: the queued report must not change
            backend.report([(tasks[1], "FAILED"), (tasks[2], "RUNNING")])  # tasks[1]: too late

        thread = threading.Thread(target=engine)
        thread.start()
        thread.join(NO_HANG)  # the loop is blocked: every report waits behind one wake-up
        await asyncio.wait_for(asyncio.gather(futures[0], futures[1]), NO_HANG)
        assert calls == [(2, None), (2, "DONE"), (2, None)]
        assert [t.state for t in tasks] == ["DONE", "DONE", "RUNNING"]
        assert session.in_flight == 1
        backend.report_all([tasks[2]], "CANCELED")  # on the loop thread: applied at once
        assert futures[2].cancelled() and session.in_flight == 0


async def test_a_future_the_program_cancelled_does_not_break_the_report() -> None:
    backend = StuckBackend(hang=False)
    async with Session(backends=[backend]) as session:
        tasks = [ComputeTask(function=workloads.add) for _ in range(3)]
        futures = await session.submit_tasks(tasks)
        futures[0].cancel()  # e.g. asyncio.wait_for around it timed out
        futures[1].cancel()
        tasks[1].exception = ValueError("boom")
        backend.report([(tasks[0], "DONE"), (tasks[1], "FAILED"), (tasks[2], "DONE")])
        assert [t.state for t in tasks] == ["DONE", "FAILED", "DONE"]
        assert futures[2].result() is tasks[2] and session.in_flight == 0


# -- cancel ----------------------------------------------------------------------------------


async def test_cancel_unknown_uid_and_ended_task() -> None:
    async with Session() as session:
        with pytest.raises(KeyError, match=r"no task with uid 'ghost' is running in this session"):
            await session.cancel_task("ghost")
        task = ComputeTask(function=workloads.add, args=(1, 2))
        await session.submit_tasks([task])
        await session.wait_tasks([task], timeout=NO_HANG)
        assert await session.cancel_task(task) is False
        assert task.state == "DONE"


async def test_cancel_a_running_thread_function_is_refused() -> None:
    gate = threading.Event()
    async with Session(backends=[ConcurrentBackend(max_workers=1)]) as session:
        task = ComputeTask(function=gate.wait, args=(NO_HANG,))
        await session.submit_tasks([task])
        await asyncio.sleep(0.2)
        assert await session.cancel_task(task) is False
        gate.set()
        await session.wait_tasks([task], timeout=NO_HANG)
        assert (task.state, task.return_value) == ("DONE", True)


# -- close -----------------------------------------------------------------------------------


async def test_close_cancels_in_flight_and_leaves_no_child_process(tmp_path: pathlib.Path) -> None:
    before = children()
    gate = threading.Event()
    session = Session(backends=[ConcurrentBackend(max_workers=1, max_subprocesses=2)])
    pid_file = tmp_path / "grandchild.pid"
    try:
        async with session:
            running_exe = shell(f"sleep 300 & echo $! > {pid_file}; wait")
            queued_exes = [shell("sleep 300") for _ in range(2)]
            running_fn = ComputeTask(function=gate.wait, args=(NO_HANG,))
            queued_fn = ComputeTask(function=workloads.add, args=(1, 2))
            tasks = [running_exe, *queued_exes, running_fn, queued_fn]
            futures = await session.submit_tasks(tasks)
            grandchild = await read_pid(pid_file)
            assert children() - before, "the executables should be running"
        assert [t.state for t in tasks] == ["CANCELED"] * 5
        assert all(f.cancelled() for f in futures)
        assert isinstance(running_fn.exception, SessionClosedError)
        assert "was still running when its session closed" in str(running_fn.exception)
        assert session.in_flight == 0
        assert children() - before == set()
        await until_gone(grandchild)
        await session.close()  # idempotent
    finally:
        gate.set()


async def test_close_is_bounded_when_a_backend_hangs() -> None:
    stuck = StuckBackend()
    session = Session(backends=[stuck, "concurrent"], close_timeout=0.3)
    await session.start()
    task = ComputeTask(function=workloads.add, backend="stuck")
    exe = shell("sleep 300", backend="concurrent")
    before = children()
    await session.submit_tasks([task, exe])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(session.close(), NO_HANG)
    assert task.state == "CANCELED" and task.future.cancelled()
    # the backend after the hung one was still closed: its executable is gone
    assert exe.state == "CANCELED"
    assert session.backends["concurrent"]._closed
    assert not (children() - before)
    await session.close()  # idempotent, even after a failed close


async def test_close_error_of_one_backend_still_closes_the_others() -> None:
    failing = FailingShutdownBackend()
    session = Session(backends=[failing, "concurrent"])
    await session.start()
    task = ComputeTask(function=workloads.add, backend="failing-shutdown")
    exe = shell("sleep 300")
    await session.submit_tasks([task, exe])
    with pytest.raises(OSError, match=r"engine refused to stop"):
        await session.close()
    assert failing.shutdown_started
    assert (task.state, exe.state) == ("CANCELED", "CANCELED")
    assert session.backends["concurrent"]._closed
    assert session.in_flight == 0


# -- no memory kept per task -----------------------------------------------------------------


async def test_nothing_is_kept_per_task_after_it_ends() -> None:
    backend = ConcurrentBackend(max_workers=2, max_subprocesses=2)
    refs = []
    async with Session(backends=[backend]) as session:
        tasks = [TrackedTask(function=workloads.square, args=(i,)) for i in range(40)]
        tasks += [TrackedTask(function=workloads.fail, args=("x",)),
                  TrackedTask(function=workloads.async_add, args=(1, 2)),
                  TrackedTask(executable="/bin/echo", arguments=["hi"]),
                  TrackedTask(executable="/bin/sh", arguments=["-c", "exit 3"]),
                  TrackedTask(executable="/nonexistent/program"),
                  TrackedTask(executable="/bin/sleep", arguments=["300"])]
        await session.submit_tasks(tasks)
        assert await session.cancel_task(tasks[-1])
        await session.wait_tasks(tasks, timeout=NO_HANG)
        assert session.in_flight == 0
        assert backend._queued == {} and len(backend.in_flight) == 0
        refs = [weakref.ref(t) for t in tasks]
        del tasks
        assert await still_alive(refs) == []


# -- plugins seen by the session --------------------------------------------------------------


def test_session_uses_registered_backends_by_name() -> None:
    assert isinstance(rhapsody.get_backend("noop"), NoopBackend)


async def test_refusal_by_a_second_backend_undoes_the_groups_not_yet_handed_over() -> None:
    async with Session(backends=["concurrent", "noop"]) as session:
        first = ComputeTask(function=workloads.add, args=(1, 2), backend="concurrent")
        refused = shell("true", backend="concurrent", task_backend_specific_kwargs={"bogus": 1})
        later = ComputeTask(function=workloads.add, backend="noop")
        with pytest.raises(ValueError, match=r"concurrent does not understand task_backend_specific_kwargs \['bogus'\]"):
            await session.submit_tasks([first, later, refused])
        # concurrent's group (first, refused) was refused whole; noop's group was never handed over
        for task in (first, refused, later):
            assert (task.state, task.future) == ("NEW", None), task
        assert session.in_flight == 0
        await session.submit_tasks([first, later])
        await session.wait_tasks([first, later], timeout=NO_HANG)
        assert (first.return_value, later.state) == (3, "DONE")


async def test_a_refusal_by_any_backend_submits_nothing_to_any() -> None:
    async with Session(backends=["noop", "concurrent"]) as session:
        early = ComputeTask(function=workloads.add, args=(1, 2), backend="noop")
        refused = shell("true", backend="concurrent", task_backend_specific_kwargs={"bogus": 1})
        with pytest.raises(ValueError, match=r"\['bogus'\]"):
            await session.submit_tasks([early, refused])
        # All or nothing: the backend checked first has not been handed its task either.
        assert [(t.state, t.future) for t in (early, refused)] == [("NEW", None), ("NEW", None)]
        assert early.backend == "noop" and refused.backend == "concurrent"
        assert session.in_flight == 0
        # Corrected, the same call goes through.
        refused.task_backend_specific_kwargs = {}
        await session.submit_tasks([early, refused])
        await session.wait_tasks([early, refused], timeout=NO_HANG)
        assert [t.state for t in (early, refused)] == ["DONE", "DONE"]


class _LaunchFails(ThreadedBackend):
    """Passes check_tasks, then its engine fails while launching (e.g. a lost connection)."""

    name = "launch-fails"

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        raise ConnectionError("scheduler went away")


async def test_an_engine_failing_at_launch_after_another_started_fails_only_its_part() -> None:
    seen: list[tuple[str, str]] = []

    class Watcher:
        @rhapsody.hookimpl
        def rhapsody_task_states_changed(self, tasks: Sequence[Task]) -> None:
            seen.extend((t.uid, t.state) for t in tasks)

    watcher = Watcher()
    rhapsody.register_plugin(watcher)
    try:
        async with Session(backends=["noop", _LaunchFails()]) as session:
            started = ComputeTask(function=workloads.add, args=(1, 2), backend="noop")
            failing = ComputeTask(function=workloads.add, args=(3, 4), backend="launch-fails")
            futures = await session.submit_tasks([started, failing])  # does not raise
            await session.wait_tasks([started, failing], timeout=NO_HANG)
            assert started.state == "DONE"
            assert failing.state == "FAILED"
            assert isinstance(failing.exception, RuntimeError)
            assert "backend 'launch-fails' failed while launching it" in str(failing.exception)
            assert isinstance(failing.exception.__cause__, ConnectionError)
            with pytest.raises(RuntimeError, match="scheduler went away"):
                await futures[1]
            assert session.in_flight == 0
    finally:
        rhapsody.unregister_plugin(watcher)
    # Plugins heard of the failed task's submission before its end.
    assert seen.index((failing.uid, "SUBMITTED")) < seen.index((failing.uid, "FAILED"))


async def test_a_backend_that_refuses_inside_submit_tasks_alone_still_submits_nothing() -> None:
    async with Session(backends=[_LaunchFails()]) as session:
        task = ComputeTask(function=workloads.add, args=(1, 2))
        with pytest.raises(ConnectionError):
            await session.submit_tasks([task])
        assert (task.state, task.future, session.in_flight) == ("NEW", None, 0)


async def test_a_backend_failing_to_start_releases_those_that_started() -> None:
    started = RecordingBackend(name="first")
    broken = RecordingBackend(name="second", fail_init=True)
    session = Session(backends=[started, broken])
    with pytest.raises(ConnectionError, match=r"scheduler unreachable"):
        async with session:
            pytest.fail("the body must not run")
    assert started.events == ["initialized", "shut down"]
    assert broken.events == []
    with pytest.raises(SessionClosedError, match=r"^this session has been closed$"):
        await session.submit_tasks([ComputeTask(function=workloads.add)])


async def test_big_batches_pause_the_collector_and_always_restore_it() -> None:
    from rhapsody.session import _GC_PAUSE_AT

    seen: list[bool] = []

    class Probe(NoopBackend):
        async def submit_tasks(self, tasks):  # type: ignore[no-untyped-def]
            seen.append(gc.isenabled())  # the backend's own code runs with the collector on
            await super().submit_tasks(tasks)

    n = _GC_PAUSE_AT + 1
    async with Session(backends=[Probe()]) as session:
        assert gc.isenabled()
        tasks = [ComputeTask(function=workloads.add, args=(i, i)) for i in range(n)]
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks, timeout=NO_HANG)
        assert seen == [True] and gc.isenabled()
        assert {t.state for t in tasks} == {"DONE"}
        # A refused big batch (a uid twice) restores the collector too.
        twice = [ComputeTask(function=workloads.add, args=(1, 1), uid="same") for _ in range(2)]
        with pytest.raises(ValueError, match="used twice"):
            await session.submit_tasks([*[ComputeTask(function=workloads.add, args=(1, 1))
                                          for _ in range(n)], *twice])
        assert gc.isenabled()
        # A collector the program turned off stays off.
        gc.disable()
        try:
            more = [ComputeTask(function=workloads.add, args=(1, 1)) for _ in range(n)]
            await session.submit_tasks(more)
            await session.wait_tasks(more, timeout=NO_HANG)
            assert not gc.isenabled()
        finally:
            gc.enable()


async def test_cancel_before_an_executable_driver_first_runs(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"
    async with Session(backends=[ConcurrentBackend()]) as session:
        task = shell(f"touch {marker}")
        [future] = await session.submit_tasks([task])
        # No await between submit and cancel: the driver has not taken a step yet.
        assert await session.cancel_task(task) is True
        assert task.state == "CANCELED" and future.cancelled()
        await asyncio.sleep(0.5)
        assert not marker.exists(), "a task cancelled before it started must never run"
        backend = session.backends["concurrent"]
        assert len(backend.in_flight) == 0


def starting(backend: ConcurrentBackend, task: ComputeTask) -> bool:
    held = backend.in_flight.get(task.uid)
    return held is not None and held.handle.phase == "starting"


async def test_cancel_while_the_program_starts_kills_all_it_started(tmp_path: pathlib.Path) -> None:
    before = children()
    pid_file = tmp_path / "grandchild.pid"
    async with Session(backends=[ConcurrentBackend()]) as session:
        backend = session.backends["concurrent"]
        task = shell(f"sleep 300 & echo $! > {pid_file}; wait")
        await session.submit_tasks([task])
        # Catch the driver inside its spawn (a fork and exec take several loop turns).
        for _ in range(10_000):
            if starting(backend, task):
                break
            await asyncio.sleep(0)
        assert starting(backend, task), "never saw the program starting"
        assert await session.cancel_task(task) is True
        await session.wait_tasks([task], timeout=NO_HANG)
        assert task.state == "CANCELED"
        assert len(backend.in_flight) == 0
        if pid_file.exists() and pid_file.read_text().strip():
            await until_gone(int(pid_file.read_text()))
        await asyncio.sleep(0.2)
        assert children() - before == set()

