"""The ``concurrent`` backend: functions on a thread or process pool, executables as subprocesses.

Functions go to a ``concurrent.futures`` executor in chunks: one pool work item carries several
tasks, so a large submission pays the pool's per-item cost (a lock, a queue hop and, for
processes, a pickle round trip) once per chunk instead of once per task. Chunks are small enough
(at most a quarter of the tasks per worker, see ``_chunk_size``) that the pool stays balanced.
Thread chunks report each task as it ends; process chunks report when the chunk returns.

Executables run as asyncio subprocesses in their own session (process group), so a timeout or a
cancellation kills everything the command started. Each holds the cores, GPUs and memory its
``resources=`` request asks for on the node (see ``node.py``) from before it starts until its
group is gone, and sees only its own GPUs.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import multiprocessing.connection
import os
import shutil
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cloudpickle

from .._compat import executor_workers, pool_broken, pool_processes, process_pool_settings
from ..backend import BaseBackend, check_process_options, is_async_callable
from ..errors import WorkerLostError
from ..hookspecs import hookimpl
from ..resources import Resources, resources_of
from ..states import TaskState
from ..task import Task
from .node import (
    GPU_VARIABLES,
    Demand,
    Grant,
    Node,
    check_function_request,
    declared_gpus,
    detect_gpus,
    launcher_command,
    machine_memory,
)
from .pool_worker import bounded, run_pickled_chunk
from .process_group import KILL_GRACE, Output, end_group, signal_group, spawn, stop_reading
from .worker_markers import WorkerMarkers, exit_status

_DONE, _FAILED, _CANCELED = TaskState.DONE, TaskState.FAILED, TaskState.CANCELED
_EXECUTABLE_OPTIONS = frozenset({"cwd", "env", "shell"})
_MAX_CHUNK = 256
# A pool that keeps breaking with no task of ours in a dead worker (a failing initializer, workers
# killed while idle) is rebuilt this many times in a row, then its tasks fail with its error.
_MAX_UNEXPLAINED_BREAKS = 3
_WATCH_INTERVAL = 1.0  # how often the watchdog looks at broken pools (see _watch_broken_pools)
_STRANDED_AFTER = 2.0  # how long a broken pool's thread gets to fail its futures itself
_REAP_WAIT = 1.0  # a dead worker's exit status is there within moments of its sentinel
_REQUEUED: Any = object()  # in _queued: a task of a broken pool, waiting to be resubmitted


# Where an executable's driver is; it decides how cancel_task stops it (see _cancel_driver).
# _ENDING: the program exited or timed out and its group is being killed; the task reports how
# it ended, so there is nothing left for cancel_task to stop.
_NEW, _RUNNING, _STARTING, _DOOMED, _ENDING = "new", "running", "starting", "doomed", "ending"


class _Driver:
    """An executable task and the asyncio task that runs it."""

    __slots__ = ("task", "job", "phase", "resources")

    def __init__(self, task: Task, resources: Resources | None) -> None:
        self.task = task
        self.job: asyncio.Task[None]
        self.phase = _NEW
        self.resources = resources


class ConcurrentBackend(BaseBackend):
    """Runs tasks on this machine.

    Args:
        executor: a ``ThreadPoolExecutor`` or ``ProcessPoolExecutor`` for function tasks. When
            given, the backend never shuts it down. Default: a thread pool of ``max_workers``.
        max_workers: size of the default thread pool (Python's default when omitted).
        processes: run function tasks on a process pool of this many workers that the backend
            owns, instead of threads: the choice for CPU-bound Python, which threads serialise.
        max_subprocesses: how many executables run at once (default: ``cores``).
        cores: the node's cores that executables share (default: the number of CPUs, or
            ``max_subprocesses`` where that is larger: N one-core programs at once, as before
            ``resources=`` existed).
        gpus: the node's GPUs: a count (devices ``0`` to ``N-1``) or a list of device ids.
            Default: those this process may use, from ``CUDA_VISIBLE_DEVICES`` (or
            ``ROCR_VISIBLE_DEVICES``/``HIP_VISIBLE_DEVICES``), else the NVIDIA or AMD driver's
            device list; ``0`` or ``[]`` for none (then programs see this process's devices
            unchanged, and no GPU request can be honoured).
        memory: the node's memory in MiB that executables' ``memory_per_rank`` is counted
            against (default: physical memory, or the cgroup's limit).
        mpi_launcher: the command that starts a task with ``resources={"ranks": n}``, n > 1:
            ``"mpiexec"``, ``"srun"``, ``["mpirun", "--oversubscribe"]``...; the backend runs
            ``[*launcher, "-n", n, executable, *arguments]``. Without one such tasks are refused.
        name: this instance's name in a session (default ``"concurrent"``).

    Resources (``ComputeTask(resources=...)``): an executable holds ``ranks x cores_per_rank``
    cores, ``ranks x gpus_per_rank`` GPUs and ``ranks x memory_per_rank`` MiB of the node while
    it runs (one core when it asked for nothing); one that does not fit yet waits, in order of
    arrival, while later ones may start with what the earlier ones cannot use yet (no task is
    overtaken on what it waits for). Memory is counted, not enforced as a limit. It sees its
    GPUs, and only those, through the variable the node's GPUs were found in
    (``CUDA_VISIBLE_DEVICES`` for declared ones; ``ROCR_VISIBLE_DEVICES`` for AMD GPUs found by
    the driver); the other two are removed, so that no runtime filters the ids twice. A whole
    GPU is never shared; a fraction (``gpus_per_rank`` in (0, 1)) shares a GPU with other
    fractions only. An ``env`` of the task's own that sets the variable wins. A request larger
    than the node is refused at submit, naming the resource and what the node offers.

    Function tasks run on the pool (one worker, one call): their ``resources`` may ask for at
    most one rank, one core, no GPU and no memory; anything more is refused at submit (a pool
    thread or process cannot be given GPUs of its own; run the work as an executable).

    A process-pool worker that dies (``os._exit``, a signal, a crash in C code) takes only the
    task it was running: that task fails with :class:`rhapsody.WorkerLostError` (and runs again
    up to its ``retries``), the pool is rebuilt with the same settings, and every other task of
    the broken pool runs again there. A pool given as ``executor`` is rebuilt too; the backend
    owns (and shuts down) the new one.

    Executable tasks honour ``task_backend_specific_kwargs`` ``cwd`` (working directory),
    ``env`` (the whole environment of the process; ``None`` inherits this process's) and
    ``shell`` (run ``executable`` through ``/bin/sh``, with ``arguments`` quoted onto it).

    Raises:
        TypeError: ``executor`` is not a thread or process pool.
        ValueError: ``max_workers``, ``processes``, ``max_subprocesses``, ``cores`` or
            ``memory`` is below 1, ``gpus`` is negative or repeats an id, ``mpi_launcher`` is
            empty, or ``processes`` is given with ``executor`` or ``max_workers``.
        TypeError: ``gpus`` or ``mpi_launcher`` of the wrong type.
    """

    name = "concurrent"
    task_kinds = frozenset({"function", "executable"})

    def __init__(
        self,
        *,
        executor: Executor | None = None,
        max_workers: int | None = None,
        processes: int | None = None,
        max_subprocesses: int | None = None,
        cores: int | None = None,
        gpus: int | Sequence[str | int] | None = None,
        memory: int | None = None,
        mpi_launcher: str | Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if executor is not None and not isinstance(executor, (ThreadPoolExecutor, ProcessPoolExecutor)):
            raise TypeError(
                f"concurrent: executor must be a ThreadPoolExecutor or ProcessPoolExecutor, "
                f"got {type(executor).__name__}"
            )
        for label, value in (("max_workers", max_workers), ("processes", processes),
                             ("max_subprocesses", max_subprocesses), ("cores", cores),
                             ("memory", memory)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"concurrent: {label} must be an integer >= 1, got {value!r}")
        if processes is not None and (executor is not None or max_workers is not None):
            raise ValueError(
                "concurrent: processes= makes the backend's own process pool; it cannot be "
                "combined with executor= or max_workers= (the thread pool's size)"
            )
        self._owns_executor = executor is None
        if processes is not None:
            executor = ProcessPoolExecutor(max_workers=processes)
        self._executor: Executor = executor or ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="rhapsody-concurrent"
        )
        self._in_processes = isinstance(self._executor, ProcessPoolExecutor)
        self._workers: int = executor_workers(self._executor)
        # Process pools only: which task each worker runs (read when the pool breaks), the chunk
        # ids they record, the last broken pool's findings, and breaks in a row with no cause.
        self._markers: WorkerMarkers | None = None
        self._chunk_ids = itertools.count()
        self._autopsies: dict[Executor, dict[int, tuple[int, int, int | None]]] = {}
        self._autopsy_lock = threading.Lock()
        self._unexplained_breaks = 0
        self._replaced: set[Executor] = set()  # broken pools that may still hold our chunks
        self._watchdog: asyncio.Task[None] | None = None
        if cores is None:
            cores = max(os.cpu_count() or 1, max_subprocesses or 1)
        gpu_ids, gpu_variable = declared_gpus(gpus) if gpus is not None else detect_gpus()
        self._node = Node(cores=cores, gpus=gpu_ids, gpu_variable=gpu_variable,
                          memory=memory or machine_memory(), slots=max_subprocesses or cores)
        self._mpi_launcher = launcher_command(mpi_launcher)
        # uid -> its chunk (threads) or the chunk's pool future (processes) until the task starts.
        # Not self.in_flight, on purpose: this is the hottest path of any backend, and one dict
        # store and pop per task cost ~1.6 us where an in_flight entry (an object and a lock)
        # cost ~9 us, measured side by side; the pop-claims rule is the same.
        self._queued: dict[str, Any] = {}
        # Executables live in self.in_flight, their _Driver as the handle, until they end.

    @property
    def executor(self) -> Executor:
        """The pool that runs function tasks."""
        return self._executor

    @property
    def cores(self) -> int:
        """The node's cores that executables share."""
        return self._node.cores

    @property
    def gpus(self) -> tuple[str, ...]:
        """The node's GPU device ids."""
        return self._node.gpus

    @property
    def memory(self) -> int:
        """The node's memory in MiB, as executables' ``memory_per_rank`` is counted."""
        return self._node.memory

    async def _initialize(self) -> None:
        if self._in_processes:
            self._markers = WorkerMarkers()
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_broken_pools())

    # -- submit ------------------------------------------------------------------------------

    async def check_tasks(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            options = task["task_backend_specific_kwargs"]
            if task["function"] is None:
                if options:
                    _check_executable_options(task, options)
                if task["resources"] is not None:
                    self._check_request(task, options)
                continue
            if task["resources"] is not None:
                check_function_request(task)
            if options:
                raise ValueError(
                    f"task {task['uid']}: concurrent takes no task_backend_specific_kwargs for "
                    f"function tasks, got {sorted(options)}"
                )
            if task["timeout"] is not None and not is_async_callable(task["function"]):
                raise ValueError(
                    f"task {task['uid']}: concurrent cannot interrupt a running sync function, "
                    "so timeout= works only for async functions and executables"
                )

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        functions = [task for task in tasks if task["function"] is not None]
        chunks: list[list[Task]] = []
        if functions:
            size = _chunk_size(len(functions), self._workers)
            chunks = [functions[start:start + size] for start in range(0, len(functions), size)]
        # Pickled before anything starts, so a task that cannot travel fails the whole call.
        payloads = [_pickle_chunk(chunk) if self._in_processes else None for chunk in chunks]
        create_task = asyncio.get_running_loop().create_task
        add = self.in_flight.add
        for task in tasks:
            if task["function"] is None:
                request = resources_of(task) if task["resources"] is not None else None
                driver = add(task, handle=_Driver(task, request)).handle
                driver.job = create_task(self._run_executable(driver))
        for chunk, payload in zip(chunks, payloads):
            self._submit_chunk(chunk, payload)

    def _submit_chunk(self, chunk: list[Task], payload: bytes | None = None) -> None:
        queued = self._queued
        if not self._in_processes:
            # Mark the tasks queued before the pool can start them: the runner claims each one.
            for task in chunk:
                queued[task["uid"]] = chunk
            try:
                self._executor.submit(self._run_chunk_in_thread, chunk)
            except RuntimeError as exc:  # the pool was shut down by its owner
                self._fail_chunk(chunk, exc)
            return
        if payload is None:
            payload = _pickle_chunk(chunk)
        chunk_id = next(self._chunk_ids)
        markers = self._markers.directory  # type: ignore[union-attr]
        try:
            try:
                future = self._executor.submit(run_pickled_chunk, markers, chunk_id, payload)
            except BrokenProcessPool as exc:
                # A worker died since the last submit: this chunk goes to a pool built anew.
                self._replace_pool(exc)
                future = self._executor.submit(run_pickled_chunk, markers, chunk_id, payload)
        except RuntimeError as exc:
            # A pool shut down by its owner, or one that cannot be rebuilt: the chunk's tasks
            # fail, the call goes on.
            self._fail_chunk(chunk, exc)
            return
        future.rhapsody_chunk = (chunk, chunk_id, self._executor, payload)  # type: ignore[attr-defined]
        for task in chunk:
            queued[task["uid"]] = future
        # Added last, so a chunk that already finished still releases its tasks (callback runs now).
        future.add_done_callback(self._process_chunk_done)

    def _fail_chunk(self, chunk: list[Task], error: BaseException) -> None:
        # The pool refused the chunk or broke under it: each of its tasks fails with that error.
        release = self._queued.pop
        for task in chunk:
            release(task["uid"], None)
            task["exception"] = error
        self.report_all(chunk, _FAILED)

    # -- functions: threads ------------------------------------------------------------------

    def _run_chunk_in_thread(self, chunk: list[Task]) -> None:
        claim = self._queued.pop
        report = self.report
        value: Any = None
        worker = threading.current_thread().name  # for run records' lanes
        for task in chunk:
            # Whoever pops the uid first owns the task: this thread (it runs) or cancel_task.
            if claim(task["uid"], None) is None:
                continue
            task["worker"] = worker
            try:
                value = task["function"](*task["args"], **task["kwargs"])
                if inspect.iscoroutine(value):
                    value = asyncio.run(bounded(value, task["timeout"]))
            except BaseException as exc:  # SystemExit in a task must not lose the chunk
                task["exception"] = exc
                report([(task, _FAILED)])
            else:
                task["return_value"] = value
                report([(task, _DONE)])
        # A failed task's traceback keeps this frame (each frame keeps its caller's), so a
        # program that keeps the failure would keep what is left here: the rest of the chunk.
        chunk.clear()
        del task, value

    # -- functions: processes ----------------------------------------------------------------

    def _process_chunk_done(self, future: Future[Any]) -> None:
        if future.cancelled() or not self._claim(future):
            return  # cancel_task resubmitted the rest of the chunk, or the watchdog took it
        chunk: list[Task]
        chunk, chunk_id, pool, payload = future.rhapsody_chunk  # type: ignore[attr-defined]
        error = future.exception()
        if isinstance(error, BrokenProcessPool):
            self._recover(chunk, chunk_id, pool, payload)
            return
        if error is not None:
            # The chunk could not be unpickled in the worker: every task of it failed.
            self._fail_chunk(chunk, error)
            return
        self._unexplained_breaks = 0
        release = self._queued.pop
        for task in chunk:
            release(task["uid"], None)
        updates = []
        pid, outcomes = cloudpickle.loads(future.result())
        worker = f"process {pid}"  # the pool process that ran the chunk, for run records
        for task, (ok, value) in zip(chunk, outcomes):
            task["worker"] = worker
            if ok:
                task["return_value"] = value
                updates.append((task, _DONE))
            else:
                task["exception"] = value
                updates.append((task, _FAILED))
        self.report(updates)

    # -- processes: a worker died ------------------------------------------------------------

    def _recover(self, chunk: list[Task], chunk_id: int, pool: Executor, payload: bytes) -> None:
        """Fail the one task a dead worker was running; queue the rest of ``chunk`` to run again.

        Runs in the broken pool's own thread, which fails every future before it stops the
        surviving workers: so the workers found dead here are the ones that broke the pool.
        """
        if self._closed:
            # Terminated by _shutdown: the session has already ended these tasks CANCELED.
            self._fail_chunk(chunk, RuntimeError("the backend closed its process pool"))
            return
        with self._autopsy_lock:  # two broken pools' threads can report at once
            dead = self._autopsies.get(pool)
            if dead is None:
                dead = self._autopsies[pool] = self._autopsy(pool)
                if len(self._autopsies) > 8:  # only the pools still failing futures matter
                    del self._autopsies[next(iter(self._autopsies))]
        lost: Task | None = None
        found = dead.get(chunk_id)
        if found is not None and found[1] < len(chunk):
            pid, index, code = found
            lost = chunk[index]
            lost["exception"] = WorkerLostError(lost["uid"], f"process {pid}", code)
        rest = [task for task in chunk if task is not lost]
        if self._unexplained_breaks > _MAX_UNEXPLAINED_BREAKS:
            self._fail_chunk(rest, BrokenProcessPool(
                f"the process pool broke {self._unexplained_breaks} times in a row with no task "
                "running in the worker that died (a failing initializer, or workers killed "
                "from outside); its tasks fail instead of being resubmitted again"))
            rest = []
        queued = self._queued
        for task in rest:
            queued[task["uid"]] = _REQUEUED
        if lost is not None:
            queued.pop(lost["uid"], None)
            self.report([(lost, _FAILED)])
        if rest:
            # A chunk that lost no task goes back as it was, pickled once.
            again = payload if lost is None else None
            self._loop.call_soon_threadsafe(self._requeue, rest, again)  # type: ignore[union-attr]

    def _claim(self, future: Future[Any]) -> bool:
        # A chunk's outcome is handled once: by its done callback, or by the watchdog.
        with self._autopsy_lock:
            if getattr(future, "rhapsody_claimed", False):
                return False
            future.rhapsody_claimed = True  # type: ignore[attr-defined]
            return True

    async def _watch_broken_pools(self) -> None:
        """Recover the chunks of a broken pool whose own thread died before failing them.

        CPython's pool thread fails a broken pool's futures while a submit can still add to the
        table it walks ("dictionary changed size during iteration"): that thread then dies and
        the futures it had not reached stay pending forever. Seen once in 250 breaks under load.
        """
        noticed: dict[Executor, float] = {}
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            pools = {self._executor, *self._replaced}
            broken = [pool for pool in pools if pool_broken(pool)]  # type: ignore[arg-type]
            if not broken:
                continue
            now = loop.time()
            stranded: dict[Executor, list[Future[Any]]] = {}
            for value in {id(v): v for v in list(self._queued.values()) if isinstance(v, Future)}.values():
                chunk_pool = value.rhapsody_chunk[2]  # type: ignore[attr-defined]
                if chunk_pool in broken and not value.done():
                    stranded.setdefault(chunk_pool, []).append(value)
            for pool in broken:
                if pool not in stranded:
                    self._replaced.discard(pool)
                    noticed.pop(pool, None)
                    continue
                if now - noticed.setdefault(pool, now) < _STRANDED_AFTER:
                    continue
                for future in stranded[pool]:
                    if self._claim(future):
                        chunk, chunk_id, _, payload = future.rhapsody_chunk  # type: ignore[attr-defined]
                        self._recover(chunk, chunk_id, pool, payload)
                for process in pool_processes(pool):  # type: ignore[arg-type]
                    if process.is_alive():
                        process.terminate()  # the dead thread never stopped them

    def _autopsy(self, pool: Executor) -> dict[int, tuple[int, int, int | None]]:
        """chunk id -> (pid, index, exit code) for each chunk that was running in a dead worker
        of ``pool``; counts the break as unexplained when there is none."""
        workers = {process.pid: process for process in pool_processes(pool)}  # type: ignore[arg-type]
        # A worker's sentinel is ready once it has exited: the very signal the pool saw. (Its
        # /proc entry can still read as running for a moment, until the kernel makes it a zombie.)
        ended = {sentinel for sentinel in multiprocessing.connection.wait(
            [process.sentinel for process in workers.values()], timeout=0)}
        dead: dict[int, tuple[int, int, int | None]] = {}
        for chunk_id, (pid, index) in self._markers.read().items():  # type: ignore[union-attr]
            process = workers.get(pid)
            if process is None:
                if workers:
                    continue  # a worker of an earlier pool
                gone, code = exit_status(pid)  # this Python's pool does not list its workers
            else:
                gone = process.sentinel in ended
                code = None
                if gone:
                    process.join(_REAP_WAIT)  # multiprocessing keeps the status for the pool
                    code = process.exitcode
            if gone:
                dead[chunk_id] = (pid, index, code)
        if not dead:
            self._unexplained_breaks += 1
        return dead

    def _requeue(self, tasks: list[Task], payload: bytes | None) -> None:
        # On the loop thread. A task cancel_task took meanwhile is no longer _REQUEUED; the rest
        # stay one chunk (splitting would multiply the pool's items with every break).
        queued = self._queued
        waiting = [task for task in tasks if queued.get(task["uid"]) is _REQUEUED]
        if waiting:
            self._submit_chunk(waiting, payload if len(waiting) == len(tasks) else None)

    def _replace_pool(self, error: BrokenProcessPool) -> None:
        """Build a pool like the broken one; the backend owns (and shuts down) the new one.

        Raises:
            RuntimeError: the broken pool was given by the program and this Python does not say
                how it was built (the message says what to do instead).
        """
        broken = self._executor
        try:
            settings = process_pool_settings(broken)  # type: ignore[arg-type]
        except AttributeError as exc:
            raise RuntimeError(
                f"concurrent: the process pool broke ({error}) and cannot be rebuilt: {exc}. "
                "Give the backend processes=N instead of executor=, so that it builds its own"
            ) from error
        self._executor = ProcessPoolExecutor(**settings)
        self._owns_executor = True
        self._replaced.add(broken)
        broken.shutdown(wait=False, cancel_futures=True)

    # -- executables -------------------------------------------------------------------------

    async def _run_executable(self, driver: _Driver) -> None:
        task = driver.task
        uid = task["uid"]
        driver.phase = _RUNNING
        transport: asyncio.SubprocessTransport | None = None
        output = Output()
        grant: Grant | None = None
        try:
            # Held until the group is gone: a GPU is never handed on while its program lives.
            grant = await self._node.acquire(Demand.of(driver.resources))
            driver.phase = _STARTING  # cancel_task now only dooms it (see _cancel_driver)
            transport = await spawn(task, output, self._launch_prefix(driver.resources),
                                     self._environment(task, grant))
            if driver.phase is _DOOMED:
                raise asyncio.CancelledError
            driver.phase = _RUNNING
            # The task ends with its program, not at EOF on its pipes: a child the program
            # left in the background may hold them open for as long as it lives.
            exited, _ = await asyncio.wait((output.exited,), timeout=task["timeout"])
            driver.phase = _ENDING
            if not exited:
                task["exception"] = TimeoutError(
                    f"task {uid} exceeded its timeout of {task['timeout']} s; its process "
                    "group was killed"
                )
            await end_group(transport, output)
            code = transport.get_returncode()
        except asyncio.CancelledError:
            # A second cancel_task while the group is being killed must not cut that short.
            driver.phase = _DOOMED
            if transport is not None:
                await end_group(transport, output)
                task["exit_code"] = transport.get_returncode()
            self.in_flight.pop(uid)
            self.report([(task, _CANCELED)])
            return
        except Exception as exc:  # e.g. no such executable or cwd: the task fails
            if transport is not None:  # not expected once it started, but nothing may outlive it
                signal_group(transport.get_pid(), signal.SIGKILL)
                stop_reading(transport)
            self.in_flight.pop(uid)
            task["exception"] = exc
            task["stderr"] = f"{type(exc).__name__}: {exc}"
            # A program cancelled while it was starting ends CANCELED, as cancel_task promised.
            self.report([(task, _CANCELED if driver.phase is _DOOMED else _FAILED)])
            return
        finally:
            if grant is not None:
                self._node.release(grant)
        self.in_flight.pop(uid)
        if task["capture_stdio"]:
            task["stdout"] = output.stdout.decode(errors="replace")
            task["stderr"] = output.stderr.decode(errors="replace")
        task["exit_code"] = code
        self.report([(task, _DONE if code == 0 and task["exception"] is None else _FAILED)])

    def _check_request(self, task: Task, options: dict[str, Any]) -> None:
        resources = resources_of(task)
        if resources is None:
            return
        uid = task["uid"]
        if resources.ranks > 1:
            if not self._mpi_launcher:
                raise ValueError(
                    f"task {uid}: resources ranks={resources.ranks} needs an MPI launcher, and "
                    "this concurrent backend was given none: declare one, e.g. "
                    "get_backend('concurrent', mpi_launcher='mpiexec')"
                )
            env = options.get("env") if options else None
            search = (env if env is not None and "PATH" in env else os.environ).get("PATH")
            if shutil.which(self._mpi_launcher[0], path=search) is None:
                raise ValueError(
                    f"task {uid}: resources ranks={resources.ranks}: the mpi_launcher "
                    f"{self._mpi_launcher[0]!r} is not found on PATH"
                )
        problem = self._node.refusal(Demand.of(resources), resources)
        if problem is not None:
            raise ValueError(f"task {uid}: concurrent: {problem}")

    def _launch_prefix(self, resources: Resources | None) -> list[str]:
        if resources is None or resources.ranks == 1:
            return []
        return [*self._mpi_launcher, "-n", str(resources.ranks)]

    def _environment(self, task: Task, grant: Grant) -> dict[str, str] | None:
        """The program's environment: the task's own (or this process's), with its GPUs."""
        env: dict[str, str] | None = task["task_backend_specific_kwargs"].get("env")
        node = self._node
        if not node.gpus:
            return env
        own = env or {}
        variable = node.gpu_variable
        if variable in own:
            return env  # the task's own env says which devices it sees: it wins
        child = dict(env) if env is not None else dict(os.environ)
        # A task that asked for no GPU sees none (the empty list), rather than all of them.
        child[variable] = node.visible(grant)
        for other in GPU_VARIABLES:
            if other != variable and other not in own:
                child.pop(other, None)  # a second filter would index into the first one's list
        return child

    def _cancel_driver(self, driver: _Driver) -> bool:
        if driver.phase is _STARTING or driver.phase is _DOOMED:
            # Cancelling the spawn would let asyncio kill the leader alone, orphaning whatever it
            # started: the driver kills the whole group as soon as the program has started.
            driver.phase = _DOOMED
            return True
        if driver.phase is _ENDING:
            return False  # it exited or timed out: it ends DONE or FAILED, its group killed
        if driver.phase is _NEW:
            # Cancelled before its first step, a coroutine never runs its own clean-up.
            driver.job.cancel()
            self.in_flight.pop(driver.task["uid"])
            self.report([(driver.task, _CANCELED)])
            return True
        return driver.job.cancel()

    # -- cancel and shutdown -----------------------------------------------------------------

    async def cancel_task(self, task: Task) -> bool:
        uid = task["uid"]
        held = self.in_flight.get(uid)
        if held is not None:
            return self._cancel_driver(held.handle)
        if self._in_processes:
            future = self._queued.get(uid)
            if future is _REQUEUED:
                del self._queued[uid]  # its pool broke before it ran: it never will
                self.report([(task, _CANCELED)])
                return True
            if future is None or not future.cancel():
                return False  # the chunk already runs (or ran): it reports the task itself
            chunk: list[Task] = future.rhapsody_chunk[0]  # type: ignore[attr-defined]
            for member in chunk:
                self._queued.pop(member["uid"], None)
            rest = [member for member in chunk if member is not task]
            if rest:
                self._submit_chunk(rest)
        elif self._queued.pop(uid, None) is None:
            return False  # running or ended: a thread cannot be interrupted
        self.report([(task, _CANCELED)])
        return True

    async def _shutdown(self) -> None:
        drivers = [held.handle for held in self.in_flight]
        for driver in drivers:
            self._cancel_driver(driver)
        if drivers:
            await asyncio.wait([driver.job for driver in drivers], timeout=KILL_GRACE + 5)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._markers is not None:
            self._markers.close()
        if not self._owns_executor:
            return
        # Queued chunks are dropped; running ones cannot be interrupted, so wait a bounded time.
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._in_processes:
            # A ProcessPoolExecutor has no public way to stop busy workers; terminate them so no
            # child outlives the session.
            for process in pool_processes(self._executor):  # type: ignore[arg-type]
                if process.is_alive():
                    process.terminate()


def _check_executable_options(task: Task, options: dict[str, Any]) -> None:
    unknown = set(options) - _EXECUTABLE_OPTIONS
    if unknown:
        raise ValueError(
            f"task {task['uid']}: concurrent does not understand task_backend_specific_kwargs "
            f"{sorted(unknown)} (it takes {sorted(_EXECUTABLE_OPTIONS)})"
        )
    check_process_options(task["uid"], options)


def _pickle_chunk(chunk: list[Task]) -> bytes:
    try:
        return cloudpickle.dumps([(t["function"], t["args"], t["kwargs"], t["timeout"]) for t in chunk])
    except Exception:
        for task in chunk:  # name the task that cannot be pickled
            try:
                cloudpickle.dumps((task["function"], task["args"], task["kwargs"]))
            except Exception as exc:
                raise TypeError(
                    f"task {task['uid']}: its function or arguments cannot be pickled for the "
                    f"process pool: {type(exc).__name__}: {exc}"
                ) from exc
        raise


def _chunk_size(count: int, workers: int) -> int:
    return max(1, min(_MAX_CHUNK, count // (workers * 4)))


@hookimpl
def rhapsody_register_backends() -> list[type[BaseBackend]]:
    return [ConcurrentBackend]
