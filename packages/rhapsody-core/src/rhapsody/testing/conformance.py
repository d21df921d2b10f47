"""``BackendConformance``: what every rhapsody backend must do, as tests.

One backend and one session are started per test class and shared by its tests (engines such as
Dragon or a RADICAL-Pilot pilot take seconds to start). The kit runs its own event loop, so it
needs no asyncio plugin for pytest.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar

import pytest

from ..backend import BaseBackend
from ..errors import TaskExecutionError, WorkerLostError
from ..plugins import get_backend
from ..session import Session
from ..task import ComputeTask
from . import workloads

T = TypeVar("T")

FEATURES = frozenset({
    "function",        # sync Python functions
    "async_function",  # async def functions
    "executable",      # programs, with stdout/stderr/exit_code
    "cwd",             # per-task working directory
    "env",             # per-task environment
    "shell",           # shell command lines
    "timeout",         # ComputeTask(timeout=...) kills an executable
    "cancel_running",  # cancelling a running executable kills its process group
    "cancel_queued",   # a cancelled queued task never starts
    "close_kills",     # closing the session kills what still runs
    "orphans",         # no process an executable started outlives the task
    "worker_loss",     # a task that ends its worker's process fails alone (WorkerLostError), is retried
    "resources",       # each resources= key honoured or refused, never ignored; the impossible fails fast
})
"""Feature names a backend may declare in ``unsupported`` (with the reason)."""

# The task kind each feature needs: a backend whose ``task_kinds`` lacks it has those tests
# skipped without listing them in ``unsupported``.
_FEATURE_KINDS = {"function": "function", "async_function": "function", "worker_loss": "function",
                  "executable": "executable", "cwd": "executable", "env": "executable",
                  "shell": "executable", "timeout": "executable", "cancel_running": "executable",
                  "cancel_queued": "executable", "close_kills": "executable", "orphans": "executable"}


class ConformanceHarness:
    """Runs coroutines on the kit's event loop against the shared session."""

    def __init__(self, loop: asyncio.AbstractEventLoop, session: Session, suite: Any) -> None:
        self.loop = loop
        self.session = session
        self.suite = suite

    def run(self, body: Callable[[Session], Awaitable[T]], timeout: float | None = None) -> T:
        """Run ``body(session)`` to completion; fail the test if it takes over ``timeout`` s."""
        bound = timeout if timeout is not None else self.suite.task_timeout
        return self.loop.run_until_complete(asyncio.wait_for(body(self.session), bound))


def shared_harness(suite: Any, request: pytest.FixtureRequest) -> Iterator[ConformanceHarness]:
    """One event loop, backend and started session for a whole test class; closed at its end."""
    loop = asyncio.new_event_loop()
    try:
        backend = suite.make_backend(request)
        # What require() reads: the kinds of task the backend under test runs.
        type(suite)._rhapsody_task_kinds = frozenset(backend.task_kinds)
        session = Session(backends=[backend])
        loop.run_until_complete(asyncio.wait_for(session.start(), suite.task_timeout))
        try:
            yield ConformanceHarness(loop, session, suite)
        finally:
            loop.run_until_complete(asyncio.wait_for(session.close(), suite.task_timeout))
    finally:
        loop.close()


class BackendConformance:
    """Subclass this in a test module to check a backend against the rhapsody contract.

    Class attributes to set:
        backend_name: the backend's registered name.
        backend_options: keyword options for ``rhapsody.get_backend``.
        unsupported: feature name -> why this backend cannot do it (names in ``FEATURES``);
            those tests are skipped with the reason. Tests of a task kind the backend's
            ``task_kinds`` lacks (``"function"``, ``"executable"``) are skipped without being
            listed here.
        task_timeout: seconds any single test may take before it fails as hung.
        many_tasks: how many tasks the throughput test runs.
        queue_fill: how many blocking tasks are submitted to make sure a task stays queued.
        close_shared_session: run the close test on the class's shared session (it is the
            kit's last test) instead of a second backend instance — for engines where two
            instances side by side are too heavy for the machine.

    Override :meth:`make_backend` to build the backend yourself (e.g. around a cluster object)
    and :meth:`executable_options` when the backend spells cwd/env/shell differently.
    """

    backend_name: ClassVar[str] = ""
    backend_options: ClassVar[Mapping[str, Any]] = {}
    unsupported: ClassVar[Mapping[str, str]] = {}
    task_timeout: ClassVar[float] = 120.0
    many_tasks: ClassVar[int] = 100
    queue_fill: ClassVar[int] = 16
    close_shared_session: ClassVar[bool] = False

    # -- hooks for backend authors -----------------------------------------------------------

    def make_backend(self, request: pytest.FixtureRequest) -> BaseBackend:
        """Build the backend under test (default: ``get_backend(backend_name, **backend_options)``)."""
        if not self.backend_name:
            pytest.skip(f"{type(self).__name__} names no backend_name")
        return get_backend(self.backend_name, **dict(self.backend_options))

    def executable_options(
        self, *, cwd: str | None = None, env: dict[str, str] | None = None, shell: bool | None = None
    ) -> dict[str, Any]:
        """The ``task_backend_specific_kwargs`` that ask this backend for cwd/env/shell."""
        options: dict[str, Any] = {}
        if cwd is not None:
            options["cwd"] = cwd
        if env is not None:
            options["env"] = env
        if shell is not None:
            options["shell"] = shell
        return options

    # -- fixtures ----------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def rhapsody_harness(cls, request: pytest.FixtureRequest) -> Iterator[ConformanceHarness]:
        yield from shared_harness(cls(), request)

    def require(self, *features: str) -> None:
        """Skip the test unless the backend runs the task kinds and has the features it needs.

        Raises:
            ValueError: a name that is not in ``FEATURES``.
        """
        for feature in features:
            if feature not in FEATURES:
                raise ValueError(f"unknown conformance feature {feature!r}")
            kind = _FEATURE_KINDS.get(feature)
            kinds = self.task_kinds_under_test()
            if kind is not None and kinds is not None and kind not in kinds:
                pytest.skip(f"{self.backend_name} does not run {kind} tasks "
                            f"(its task_kinds: {', '.join(sorted(kinds))})")
            if feature in self.unsupported:
                pytest.skip(f"{self.backend_name} does not support {feature}: {self.unsupported[feature]}")

    def task_kinds_under_test(self) -> frozenset[str] | None:
        """The backend's ``task_kinds``: of the instance the class's session runs once it has
        started, else of the class registered as ``backend_name``; ``None`` when unknown."""
        kinds: frozenset[str] | None = type(self).__dict__.get("_rhapsody_task_kinds")
        if kinds is not None or not self.backend_name:
            return kinds
        from ..plugins import _backend_classes  # the class only: no engine check, no import

        info = _backend_classes()[0].get(self.backend_name)
        if info is None or info.backend_class is None:
            return None
        return frozenset(info.backend_class.task_kinds)

    def _shell_task(self, script: str, **kwargs: Any) -> ComputeTask:
        return ComputeTask(executable="/bin/sh", arguments=["-c", script], **kwargs)

    # -- functions ---------------------------------------------------------------------------

    def test_sync_function_returns_value(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("function")

        async def body(session: Session) -> None:
            task = ComputeTask(function=workloads.add, args=(2, 3))
            [future] = await session.submit_tasks([task])
            assert await future is task
            assert task.state == "DONE"
            assert task.return_value == 5
            assert task.exception is None
            assert await task is task

        rhapsody_harness.run(body)

    def test_async_function_returns_value(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("async_function")

        async def body(session: Session) -> None:
            task = ComputeTask(function=workloads.async_add, kwargs={"a": 20, "b": 22})
            await session.submit_tasks([task])
            await session.wait_tasks([task])
            assert task.state == "DONE", task.exception
            assert task.return_value == 42

        rhapsody_harness.run(body)

    def test_function_exception_reaches_future_with_its_type(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("function")

        async def body(session: Session) -> None:
            task = ComputeTask(function=workloads.fail, args=("kit says no",))
            [future] = await session.submit_tasks([task])
            with pytest.raises(workloads.KitError, match="kit says no"):
                await future
            assert task.state == "FAILED"
            assert isinstance(task.exception, workloads.KitError)
            # wait_tasks reports, it does not raise
            assert await session.wait_tasks([task]) == [task]

        rhapsody_harness.run(body)

    def test_many_tasks_all_complete(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("function")

        async def body(session: Session) -> None:
            tasks = [ComputeTask(function=workloads.square, args=(i,)) for i in range(self.many_tasks)]
            await session.submit_tasks(tasks)
            await session.wait_tasks(tasks)
            assert [t.state for t in tasks] == ["DONE"] * len(tasks)
            assert [t.return_value for t in tasks] == [i * i for i in range(len(tasks))]
            assert session.in_flight == 0

        rhapsody_harness.run(body)

    # -- executables -------------------------------------------------------------------------

    def test_executable_output_and_exit_code(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("executable")

        async def body(session: Session) -> None:
            task = self._shell_task("echo out; echo err >&2")
            [future] = await session.submit_tasks([task])
            assert await future is task
            assert (task.state, task.exit_code) == ("DONE", 0)
            assert task.stdout.strip() == "out"
            assert task.stderr.strip() == "err"

        rhapsody_harness.run(body)

    def test_nonzero_exit_raises_task_execution_error(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("executable")

        async def body(session: Session) -> None:
            task = self._shell_task("echo boom >&2; exit 3")
            [future] = await session.submit_tasks([task])
            with pytest.raises(TaskExecutionError) as caught:
                await future
            assert caught.value.uid == task.uid
            assert caught.value.exit_code == 3
            assert "boom" in caught.value.stderr
            assert (task.state, task.exit_code) == ("FAILED", 3)
            assert "boom" in task.stderr

        rhapsody_harness.run(body)

    def test_missing_executable_fails_cleanly(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("executable")

        async def body(session: Session) -> None:
            task = ComputeTask(executable="/nonexistent/rhapsody-kit-program")
            [future] = await session.submit_tasks([task])
            with pytest.raises(Exception):  # noqa: B017 - the type is the backend's; failing is the contract
                await future
            assert task.state == "FAILED"
            assert task.exception is not None

        rhapsody_harness.run(body)

    def test_cwd(self, rhapsody_harness: ConformanceHarness, tmp_path: pathlib.Path) -> None:
        self.require("executable", "cwd")

        async def body(session: Session) -> None:
            task = ComputeTask(executable="/bin/pwd",
                               task_backend_specific_kwargs=self.executable_options(cwd=str(tmp_path)))
            await session.submit_tasks([task])
            await session.wait_tasks([task])
            assert task.state == "DONE", task.exception
            assert os.path.realpath(task.stdout.strip()) == os.path.realpath(tmp_path)

        rhapsody_harness.run(body)

    def test_env(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("executable", "env")

        async def body(session: Session) -> None:
            env = {"RHAPSODY_KIT_VALUE": "forty-two", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            task = self._shell_task('echo "$RHAPSODY_KIT_VALUE"',
                                    task_backend_specific_kwargs=self.executable_options(env=env))
            await session.submit_tasks([task])
            await session.wait_tasks([task])
            assert task.state == "DONE", task.exception
            assert task.stdout.strip() == "forty-two"

        rhapsody_harness.run(body)

    def test_shell(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("executable", "shell")

        async def body(session: Session) -> None:
            task = ComputeTask(executable="echo abc | tr a-c x-z",
                               task_backend_specific_kwargs=self.executable_options(shell=True))
            await session.submit_tasks([task])
            await session.wait_tasks([task])
            assert task.state == "DONE", task.exception
            assert task.stdout.strip() == "xyz"

        rhapsody_harness.run(body)

    def test_mixed_functions_and_executables_in_one_submit(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("function", "executable")

        async def body(session: Session) -> None:
            tasks = [ComputeTask(function=workloads.square, args=(7,)), self._shell_task("echo 7")]
            await session.submit_tasks(tasks)
            await session.wait_tasks(tasks)
            assert [t.state for t in tasks] == ["DONE", "DONE"], [t.exception for t in tasks]
            assert tasks[0].return_value == 49
            assert tasks[1].stdout.strip() == "7"

        rhapsody_harness.run(body)

    # -- timeouts, waiting, cancelling -------------------------------------------------------

    def test_timeout_stops_executable(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("executable", "timeout")

        async def body(session: Session) -> None:
            task = self._shell_task("sleep 120", timeout=2)
            await session.submit_tasks([task])
            await session.wait_tasks([task], timeout=self.task_timeout / 2)
            assert task.state == "FAILED"
            assert task.exception is not None

        rhapsody_harness.run(body)

    def test_wait_timeout_says_how_many_finished(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("executable", "cancel_running")

        async def body(session: Session) -> None:
            quick, slow = self._shell_task("true"), self._shell_task("sleep 120")
            await session.submit_tasks([quick, slow])
            await session.wait_tasks([quick])
            with pytest.raises(TimeoutError, match="1 of 2 tasks"):
                await session.wait_tasks([quick, slow], timeout=0.5)
            assert await session.cancel_task(slow)

        rhapsody_harness.run(body)

    def test_cancel_running_executable_kills_process_group(
        self, rhapsody_harness: ConformanceHarness, tmp_path: pathlib.Path
    ) -> None:
        self.require("executable", "cancel_running")
        pid_file = tmp_path / "child.pid"

        async def body(session: Session) -> None:
            task = self._shell_task(f"sleep 300 & echo $! > {pid_file}; wait")
            [future] = await session.submit_tasks([task])
            child = await _read_pid(pid_file, self.task_timeout / 2)
            assert await session.cancel_task(task) is True
            assert task.state == "CANCELED"
            assert future.cancelled()
            await _until_gone(child, 15)

        rhapsody_harness.run(body)

    def test_cancel_queued_task_never_starts(
        self, rhapsody_harness: ConformanceHarness, tmp_path: pathlib.Path
    ) -> None:
        self.require("executable", "cancel_queued")
        marker = tmp_path / "marker"

        async def body(session: Session) -> None:
            blockers = [self._shell_task("sleep 2") for _ in range(self.queue_fill)]
            late = self._shell_task(f"touch {marker}")
            await session.submit_tasks([*blockers, late])
            assert await session.cancel_task(late) is True
            assert late.state == "CANCELED"
            await session.wait_tasks(blockers, timeout=self.task_timeout / 2)
            await asyncio.sleep(0.5)
            assert not marker.exists(), "a cancelled queued task ran"

        rhapsody_harness.run(body)

    def test_cancel_by_uid_and_unknown_uid(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("executable", "cancel_running")

        async def body(session: Session) -> None:
            task = self._shell_task("sleep 120")
            await session.submit_tasks([task])
            assert await session.cancel_task(task.uid) is True
            assert task.state == "CANCELED"
            with pytest.raises(KeyError, match="no-such-uid"):
                await session.cancel_task("no-such-uid")
            assert await session.cancel_task(task) is True  # already cancelled: stays so

        rhapsody_harness.run(body)

    # -- portable resources ------------------------------------------------------------------

    def _resource_task(self, key: str, value: Any) -> ComputeTask:
        kinds = self.task_kinds_under_test() or frozenset({"executable"})
        if "executable" in kinds and "executable" not in self.unsupported:
            return self._shell_task("echo rank", resources={key: value})
        return ComputeTask(function=workloads.square, args=(3,), resources={key: value})

    async def _honoured(self, session: Session, task: ComputeTask, key: str) -> bool:
        """True when the task ran; False when it was refused at submit, or failed, naming ``key``'s
        resource. A task left waiting fails the test: no request may wait forever."""
        try:
            await session.submit_tasks([task])
        except (ValueError, TypeError) as exc:
            assert task.state == "NEW", "a refused task must not have been submitted"
            _names_resource(exc, key)
            return False
        try:
            await session.wait_tasks([task], timeout=self.task_timeout / 2)
        except TimeoutError:
            await session.cancel_task(task)
            raise AssertionError(
                f"resources={task.resources} was neither refused at submit nor run within "
                f"{self.task_timeout / 2} s: a request the backend cannot honour must fail fast"
            ) from None
        if task.state == "FAILED":
            _names_resource(task.exception, key)
            return False
        assert task.state == "DONE", (task.state, task.exception)
        return True

    def test_resources_each_key_is_honoured_or_refused(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("resources")

        async def body(session: Session) -> None:
            for key, value in (("ranks", 2), ("cores_per_rank", 2), ("gpus_per_rank", 1),
                               ("memory_per_rank", 64)):
                task = self._resource_task(key, value)
                if not await self._honoured(session, task, key):
                    continue
                if task.kind == "function":
                    assert task.return_value == 9
                elif key == "ranks":  # honoured, not ignored: the program ran once per rank
                    assert task.stdout.split() == ["rank", "rank"], (
                        f"resources={{'ranks': 2}} ran the program as {task.stdout!r}: it must "
                        "run once per rank, or be refused")

        rhapsody_harness.run(body)

    def test_resources_never_offered_fail_fast(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("resources")

        async def body(session: Session) -> None:
            for key, value in (("ranks", 10**6), ("cores_per_rank", 10**6),
                               ("gpus_per_rank", 10**6), ("memory_per_rank", 2**40)):
                task = self._resource_task(key, value)
                assert not await self._honoured(session, task, key), (
                    f"resources={{{key!r}: {value}}} is beyond any machine, yet the task ran: "
                    "the request was ignored")

        rhapsody_harness.run(body)

    # -- bad input ---------------------------------------------------------------------------

    def test_unknown_backend_option_is_rejected_by_name(self, rhapsody_harness: ConformanceHarness) -> None:
        async def body(session: Session) -> None:
            kinds = self.task_kinds_under_test() or frozenset({"executable"})
            kind = ("executable" if "executable" not in self.unsupported and "executable" in kinds
                    else "function")
            bad = (self._shell_task("true", task_backend_specific_kwargs={"rhapsody_no_such_option": 1})
                   if kind == "executable" else
                   ComputeTask(function=workloads.square, args=(1,),
                               task_backend_specific_kwargs={"rhapsody_no_such_option": 1}))
            with pytest.raises((ValueError, TypeError), match="rhapsody_no_such_option"):
                await session.submit_tasks([bad])
            assert bad.state == "NEW"
            # the session keeps working
            good = (self._shell_task("true") if kind == "executable"
                    else ComputeTask(function=workloads.square, args=(3,)))
            await session.submit_tasks([good])
            await session.wait_tasks([good])
            assert good.state == "DONE", good.exception

        rhapsody_harness.run(body)

    def test_unknown_backend_name_is_rejected_at_submit(self, rhapsody_harness: ConformanceHarness) -> None:
        async def body(session: Session) -> None:
            task = ComputeTask(function=workloads.square, args=(2,), backend="no-such-backend")
            with pytest.raises(ValueError, match="no-such-backend"):
                await session.submit_tasks([task])
            assert session.in_flight == 0

        rhapsody_harness.run(body)

    # -- one failure stays one failure -------------------------------------------------------

    def _functions_run_elsewhere(self, harness: ConformanceHarness) -> None:
        # A backend that runs functions in the test's own process (threads) cannot lose a worker
        # without taking the test run with it.
        async def body(session: Session) -> int:
            probe = ComputeTask(function=workloads.process_id)
            await session.submit_tasks([probe])
            return (await probe).return_value  # type: ignore[no-any-return]

        if harness.run(body) == os.getpid():
            pytest.skip("functions run in the test's own process: a lost worker cannot be simulated")

    def test_lost_worker_fails_only_its_task(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("function", "worker_loss")
        self._functions_run_elsewhere(rhapsody_harness)

        async def body(session: Session) -> None:
            doomed = ComputeTask(function=workloads.end_own_process, args=(13,), retries=0)
            healthy = [ComputeTask(function=workloads.add, args=(i, 1)) for i in range(8)]
            await session.submit_tasks([doomed, *healthy])
            await session.wait_tasks([doomed, *healthy])
            assert doomed.state == "FAILED"
            assert isinstance(doomed.exception, WorkerLostError), (
                f"a task whose process died must fail with rhapsody.WorkerLostError, got "
                f"{doomed.exception!r}")
            assert doomed.exception.uid == doomed.uid
            assert [t.return_value for t in healthy] == [i + 1 for i in range(8)]
            later = ComputeTask(function=workloads.add, args=(2, 3))
            await session.submit_tasks([later])
            assert (await later).return_value == 5

        rhapsody_harness.run(body)

    def test_lost_worker_is_retried(self, rhapsody_harness: ConformanceHarness, tmp_path: pathlib.Path) -> None:
        self.require("function", "worker_loss")
        self._functions_run_elsewhere(rhapsody_harness)
        marker = tmp_path / "died-once"

        async def body(session: Session) -> None:
            task = ComputeTask(function=workloads.end_own_process_once, args=(str(marker), 13))
            await session.submit_tasks([task])
            await session.wait_tasks([task])
            assert marker.exists(), "the first attempt did not run"
            assert (task.state, task.return_value, task.retried) == ("DONE", "survived", 1), (
                f"a lost worker's task must run again (retries=3 by default): {task.exception!r}")

        rhapsody_harness.run(body)

    def test_no_process_outlives_its_task(self, rhapsody_harness: ConformanceHarness, tmp_path: pathlib.Path) -> None:
        self.require("executable", "orphans")
        pid_file = tmp_path / "child.pid"

        async def body(session: Session) -> None:
            # The program exits at once; its background child would hold the output open 300 s.
            task = self._shell_task(f"sleep 300 & echo $! > {pid_file}; echo started")
            await session.submit_tasks([task])
            await session.wait_tasks([task])
            assert (task.state, task.stdout, task.exit_code) == ("DONE", "started\n", 0)
            child = await _read_pid(pid_file, 10)
            await _until_gone(child, 15)

        rhapsody_harness.run(body)

    def test_another_event_loop_is_refused_at_once(self, rhapsody_harness: ConformanceHarness) -> None:
        self.require("function")
        task = ComputeTask(function=workloads.add, args=(1, 1))
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                asyncio.run(rhapsody_harness.session.submit_tasks([task]))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=other_thread, name="conformance-foreign-loop")
        thread.start()
        thread.join(self.task_timeout)
        assert not thread.is_alive(), "submit_tasks from another event loop hung"
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
        assert "another event loop" in str(errors[0])
        assert task.state == "NEW"

    # -- close -------------------------------------------------------------------------------

    def test_close_is_bounded_and_kills_what_runs(self, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> None:
        self.require("executable", "close_kills")
        pid_file = tmp_path / "child.pid"

        async def body(session: Session) -> None:
            async with session:
                task = self._shell_task(f"sleep 300 & echo $! > {pid_file}; wait")
                [future] = await session.submit_tasks([task])
                child = await _read_pid(pid_file, self.task_timeout / 2)
            assert task.state == "CANCELED"
            assert future.done()
            await _until_gone(child, 15)
            await session.close()  # idempotent
            with pytest.raises(RuntimeError, match="closed"):
                await session.submit_tasks([self._shell_task("true")])

        if self.close_shared_session:
            # The class's own session: this is the kit's last test, and the fixture's own
            # close afterwards is a no-op.
            harness: ConformanceHarness = request.getfixturevalue("rhapsody_harness")
            harness.run(body)
            return
        loop = asyncio.new_event_loop()
        try:
            session = Session(backends=[self.make_backend(request)])
            loop.run_until_complete(asyncio.wait_for(body(session), self.task_timeout))
        finally:
            loop.close()


# Words one of which a refusal of a resources= key must use (engines name resources their way).
_RESOURCE_WORDS = {"ranks": ("rank", "mpi"), "cores_per_rank": ("core", "cpu"),
                   "gpus_per_rank": ("gpu",), "memory_per_rank": ("mem",)}


def _names_resource(error: BaseException | None, key: str) -> None:
    text = f"{type(error).__name__}: {error}".lower()
    assert any(word in text for word in _RESOURCE_WORDS[key]), (
        f"a refusal of resources {key!r} must name the resource, got {text!r}")


async def _read_pid(path: pathlib.Path, timeout: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        await asyncio.sleep(0.05)
    raise AssertionError(f"the task did not start within {timeout} s (no {path})")


async def _until_gone(pid: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if not _alive(pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} started by the task is still alive")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if sys.platform.startswith("linux"):
        try:  # a zombie waiting for its parent's wait() is gone for our purposes
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().split(") ", 1)[1][0] != "Z"
        except (FileNotFoundError, IndexError):
            return False
    return True
