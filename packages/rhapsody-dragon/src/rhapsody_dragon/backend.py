"""``DragonBackend``: function tasks on a pool of long-lived Dragon workers, the rest on a ``Batch``.

Function tasks go to :class:`rhapsody_dragon.pool.FunctionPool` (``function_mode="pool"``, the
default) or, with ``function_mode="batch"``, to the Batch as every other task does. Executables
and MPI jobs always stream through one ``dragon.workflows.batch.Batch``, started when the first
such task comes (in batch mode: when the backend starts).

The Batch path reads top to bottom in this file: :meth:`DragonBackend.submit_tasks` hands each task
to the Batch and records it; the monitor thread (:meth:`DragonBackend._monitor`) takes the tuids
Batch announces and, every 0.2 s, those the Batch's results DDict lists (results written and not
yet taken: Batch announces per launch group), pops each result (one round trip that reads and
frees it), and hands the whole sweep to the session with one :meth:`report` call.

Must run inside a Dragon runtime: start the program with the ``dragon`` launcher
(``dragon my_workflow.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rhapsody import BaseBackend, Task, WorkerLostError
from rhapsody.builtin.worker_markers import exit_status

from . import _compat, leftovers
from .batch_task import (
    HOST,
    BatchEntry,
    cancel_in_dragon,
    collect_output,
    drop_output,
    drop_pid,
    kill_group,
    run_watched,
    timed_out,
)
from .pool import FunctionPool
from .runner import TIMED_OUT
from .templates import ProcessSpec, build_templates, check_options, find_program

_DONE = "DONE"
_FAILED = "FAILED"
_CANCELED = "CANCELED"
_ENDED = frozenset({_DONE, _FAILED, _CANCELED})
# How long the monitor waits for a Batch notice before looking again, and how often it lists the
# results DDict's keys (one round trip per shard) for results Batch has not announced yet.
_SWEEP_INTERVAL_S = 0.05
_LISTING_INTERVAL_S = 0.2


_LIVENESS_INTERVAL_S = 1.0  # how often the monitor looks for function tasks whose worker died
FUNCTION_MODES = ("pool", "batch")


class _BatchStalled(RuntimeError):
    """A worker of the Batch died: the Batch will run nothing more (see _fail_lost_functions)."""


class DragonBackend(BaseBackend):
    """Runs functions (sync and ``async``) on long-lived Dragon workers, executables and MPI jobs
    on a Dragon ``Batch``.

    With ``function_mode="pool"`` (the default) function tasks run on a pool of worker processes
    started when the backend is awaited, ``workers_per_node`` on each of ``num_nodes`` nodes, fed
    in chunks (see :mod:`rhapsody_dragon.pool`). A worker that dies fails only the task it was
    running, with :class:`rhapsody.WorkerLostError` (so the session runs it again), and is
    replaced. With ``function_mode="batch"`` functions stream through the Batch instead, one
    Dragon task each (~3 tasks/s on 2 cores; a worker death there stops the Batch for good).

    The Batch stays up until ``close()``: tasks stream into it as they are submitted, with no
    compile or start step. In pool mode it starts with the first executable.

    Executables run as Dragon processes. ``task_backend_specific_kwargs`` may hold:

    - ``process_template``: a dict of :class:`dragon.native.process.ProcessTemplate` options
      for the task's process: ``cwd``, ``env``, ``policy``, ``options``. A task's working
      directory can only be set this way (there is no top-level ``cwd``).
    - ``process_templates``: ``[(nranks, {...}), ...]`` for a (MPI) job of several process
      groups, each dict as above; the task's executable and arguments run in every rank.
    - ``shell``: ``True`` runs ``executable`` (with ``arguments`` quoted onto it) through
      ``/bin/sh -c``.

    Function tasks take no options.

    Args:
        function_mode: ``"pool"`` (function tasks on the worker pool) or ``"batch"`` (on the
            Batch, one Dragon task each).
        num_nodes: nodes for the pool and the Batch (``None``: all nodes of the allocation).
        pool_nodes: nodes per Batch worker pool, passed to ``Batch`` (Dragon 0.15 always uses 1).
        workers_per_node: worker processes per node: the pool's in pool mode (``None``: one per
            logical CPU of a node, as ``ProcessPoolExecutor`` does), the Batch's in batch mode
            (``None``: Dragon's default, one per physical core). In pool mode the Batch, which
            then runs only executables, keeps Dragon's default.
        chunk_size: the most function tasks sent to a pool worker at once (pool mode).
        output_dir: where executables' stdout/stderr files are written and read back; it must
            be visible from every node. ``None``: a temporary directory, removed on close.
        disable_telemetry: passed to ``Batch(disable_telem=...)``.
        shutdown_timeout: seconds ``close()`` waits for Dragon before forcing it down.
        name: this instance's name in a session (default ``"dragon"``).

    Raises:
        ValueError: a count below 1, a non-positive ``shutdown_timeout`` or an unknown
            ``function_mode``.
    """

    name = "dragon"
    task_kinds = frozenset({"function", "executable"})

    def __init__(
        self,
        *,
        function_mode: str = "pool",
        num_nodes: int | None = None,
        pool_nodes: int | None = None,
        workers_per_node: int | None = None,
        chunk_size: int = 1024,
        output_dir: str | Path | None = None,
        disable_telemetry: bool = False,
        shutdown_timeout: float = 30.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        for label, value in (("num_nodes", num_nodes), ("pool_nodes", pool_nodes),
                             ("workers_per_node", workers_per_node), ("chunk_size", chunk_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"dragon: {label} must be an integer >= 1 or None, got {value!r}")
        if not (isinstance(shutdown_timeout, (int, float)) and shutdown_timeout > 0
                and math.isfinite(shutdown_timeout)):
            raise ValueError(f"dragon: shutdown_timeout must be a positive number, got {shutdown_timeout!r}")
        if function_mode not in FUNCTION_MODES:
            raise ValueError(f"dragon: function_mode must be one of {FUNCTION_MODES}, got {function_mode!r}")
        self._function_mode = function_mode
        self._chunk_size = chunk_size
        self._pool: FunctionPool | None = None
        self._batch_starting: asyncio.Lock | None = None
        self._num_nodes = num_nodes
        self._pool_nodes = pool_nodes
        self._workers_per_node = workers_per_node
        self._output_dir_option = Path(output_dir) if output_dir is not None else None
        self._disable_telemetry = disable_telemetry
        self._shutdown_timeout = float(shutdown_timeout)

        self._batch: Any = None
        self._plain_submitter: Any = None
        self._output_dir: Path | None = None
        self._own_output_dir = False
        self._cores_per_node = 1
        self._node_count = 1
        self._hostnames: frozenset[str] = frozenset()
        self._ddicts: list[Any] = []

        # The Batch's tasks live in self.in_flight under their Dragon tuid, their BatchEntry as the
        # handle; a cancelled one stays there (cancelling) until the monitor drops its result.
        # Its lock is held while a submit registers tasks and while the monitor takes entries,
        # so the monitor never sees a tuid before its entry exists.
        self._lock = self.in_flight.lock
        self._monitor_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._broken: BaseException | None = None
        self._file_counter = itertools.count()

    # -- life cycle --------------------------------------------------------------------------

    @classmethod
    def check_available(cls) -> None:
        """Raise Dragon's own ``ImportError`` when ``dragonhpc[batch]`` is not installed."""
        import dragon.workflows.batch  # noqa: F401

    async def _initialize(self) -> None:
        """Start the worker pool (pool mode) or the Batch (batch mode): seconds, either way.

        Raises:
            ImportError: dragonhpc is not installed.
            RuntimeError: not running under the ``dragon`` launcher.
            ValueError: ``num_nodes`` is more than the allocation has.
            TimeoutError: pool workers did not start within ``shutdown_timeout`` + 60 s.
        """
        self.check_available()
        _require_dragon_runtime()
        if self._output_dir_option is None:
            base = Path(tempfile.gettempdir())
            leftovers.remove_stale(base)  # what killed clients on this node left
            self._output_dir = Path(tempfile.mkdtemp(prefix=leftovers.prefix(), dir=base))
            self._own_output_dir = True
        else:
            self._output_dir = self._output_dir_option
            self._output_dir.mkdir(parents=True, exist_ok=True)
        if self._function_mode == "pool":
            self._pool = await asyncio.to_thread(self._start_pool)
        else:
            self._batch = await asyncio.to_thread(self._start_batch)

    def _start_pool(self) -> FunctionPool:
        from dragon.native.machine import Node, System

        nodes = [Node(uid) for uid in System().nodes]
        if self._num_nodes is not None:
            if self._num_nodes > len(nodes):
                raise ValueError(f"dragon: num_nodes={self._num_nodes}, but the allocation has {len(nodes)} node(s)")
            nodes = nodes[:self._num_nodes]
        # As ProcessPoolExecutor does: one worker per logical CPU (of the smallest node).
        per_node = self._workers_per_node or max(1, min(node.num_cpus for node in nodes))
        pool = FunctionPool(self.report, hosts=[node.hostname for node in nodes], workers_per_node=per_node,
                            chunk_size=self._chunk_size, start_timeout=self._shutdown_timeout + 60.0)
        pool.start()
        return pool

    async def _ensure_batch(self) -> Any:
        """The Batch, started on first use in pool mode (one start, however many callers wait)."""
        if self._batch is None:
            if self._batch_starting is None:
                self._batch_starting = asyncio.Lock()
            async with self._batch_starting:
                if self._batch is None and not self._closed:
                    self._batch = await asyncio.to_thread(self._start_batch)
        if self._batch is None:
            raise RuntimeError("dragon: the backend has been closed")
        return self._batch

    def _start_batch(self) -> Any:
        from dragon.workflows.batch import Batch

        options: dict[str, Any] = {"num_nodes": self._num_nodes, "pool_nodes": self._pool_nodes,
                                   "disable_telem": self._disable_telemetry}
        if self._workers_per_node is not None and self._function_mode == "batch":
            # In pool mode the option sizes the pool; the Batch, for executables, keeps Dragon's
            # default (it refuses more workers than physical cores).
            options["workers_per_node"] = self._workers_per_node
        batch = Batch(**options)
        try:
            topology = batch.topology()
            self._node_count = topology.total_nodes
            self._hostnames = frozenset(h for pool in topology.pool_hostnames for h in pool)
            # Jobs wider than one node's physical cores become multi-node jobs in Batch.
            self._cores_per_node = _compat.physical_cores_per_node(batch, topology.workers_per_pool[0])
            self._plain_submitter = batch.options()
        except BaseException:
            batch.terminate(timeout=5.0)
            raise
        return batch

    async def _shutdown(self) -> None:
        """Stop the monitor and what still runs, then join the Batch (terminate it if that fails).

        Bounded: about ``shutdown_timeout`` + 20 s at most, whatever state Dragon is in.
        """
        self._stopping.set()
        monitor = self._monitor_thread
        if monitor is not None:
            # The monitor looks at the stop flag at least every _SWEEP_INTERVAL_S.
            await asyncio.to_thread(monitor.join, min(5.0, self._shutdown_timeout))
        try:
            pool, self._pool = self._pool, None
            if pool is not None:
                # What the pool still holds the session ends CANCELED once the backend is closed.
                await asyncio.to_thread(pool.close, min(5.0, self._shutdown_timeout))
            for ddict in self._ddicts:
                try:
                    ddict.destroy()
                except Exception:  # noqa: BLE001 - already destroyed by its user, or runtime gone
                    pass
            self._ddicts.clear()
            if self._batch is not None:
                await asyncio.to_thread(self._stop_batch)
        finally:
            self.in_flight.pop_all()
            if self._own_output_dir and self._output_dir is not None:
                shutil.rmtree(self._output_dir, ignore_errors=True)

    def _stop_batch(self) -> None:
        batch, self._batch = self._batch, None
        # Tasks that still run are stopped as cancel_task stops them, so that the Batch can wind
        # down through join(): terminate() with work in flight has brought the whole Dragon
        # runtime down ("fatal exception") on a loaded 2-core machine. Bounded as a whole.
        entries = [held.handle for held in self.in_flight]
        for entry in entries:
            kill_group(entry)
        deadline = time.monotonic() + min(10.0, self._shutdown_timeout)
        for entry in entries:
            cancel_in_dragon(entry, min(deadline - time.monotonic(), 5.0))
        joined, failure = self._join(batch) if self._broken is None else (False, None)
        if joined:
            return
        batch.terminate(timeout=min(5.0, self._shutdown_timeout))
        if failure is not None:
            raise RuntimeError("dragon: Batch.join() failed; the Batch was terminated") from failure

    def _join(self, batch: Any) -> tuple[bool, BaseException | None]:
        """Join ``batch`` within ``shutdown_timeout``: (whether it joined, what join raised)."""
        # join() waits for Dragon's managers to wind down; its timeout bounds each of its steps,
        # not the whole, so it runs aside and is given up on after shutdown_timeout.
        failure: list[BaseException] = []

        def join() -> None:
            try:
                batch.join(timeout=self._shutdown_timeout)
            except BaseException as exc:  # noqa: BLE001 - handed to the closing thread
                failure.append(exc)

        joiner = threading.Thread(target=join, name="rhapsody-dragon-join", daemon=True)
        joiner.start()
        joiner.join(self._shutdown_timeout)
        error = failure[0] if failure else None
        return not joiner.is_alive() and error is None, error

    # -- submit ------------------------------------------------------------------------------

    async def check_tasks(self, tasks: Sequence[Task]) -> None:
        """Refuse a task whose ``task_backend_specific_kwargs`` this backend cannot honour.

        Raises:
            ValueError, TypeError: an unknown key (named in the message) or a value of the wrong
                type; the session then submits nothing of the call.
        """
        self._specs(tasks)

    @staticmethod
    def _specs(tasks: Sequence[Task]) -> list[ProcessSpec | None]:
        # None for a function task: it needs no process spec.
        specs: list[ProcessSpec | None] = []
        # A task stores only the fields it was given: an unset one reads None here, without the
        # cost of its default (this runs per task on the hot path).
        stored = dict.get
        for task in tasks:
            if stored(task, "function") is not None:
                if stored(task, "task_backend_specific_kwargs") or stored(task, "resources"):
                    check_options(task, function=True)
                specs.append(None)
            else:
                specs.append(check_options(task, function=False))
        return specs

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        """Hand function tasks to the pool (pool mode) and the others to the Batch; returns once
        they are queued. Starts the Batch first when the call is its first task (pool mode).

        Raises:
            ValueError, TypeError: a task's ``task_backend_specific_kwargs`` has a key this
                backend does not take (named in the message) or a value of the wrong type;
                nothing of this call is submitted then.
            RuntimeError: the backend is not started, or Dragon failed earlier.
        """
        if not self._initialized or self._closed:
            raise RuntimeError("dragon: the backend is not started (await it) or has been closed")
        specs = self._specs(tasks)
        pool = self._pool
        pooled: list[Task] = []
        if pool is not None:
            if pool.broken is not None:
                raise RuntimeError(f"dragon: the worker pool failed earlier: {pool.broken!r}") from pool.broken
            pooled = [task for task, spec in zip(tasks, specs) if spec is None]
            if pooled:
                kept = [(task, spec) for task, spec in zip(tasks, specs) if spec is not None]
                tasks, specs = [task for task, _ in kept], [spec for _, spec in kept]
        if tasks:
            if self._broken is not None:
                raise RuntimeError(f"dragon: the Batch failed earlier: {self._broken!r}") from self._broken
            batch = await self._ensure_batch()
        if pooled:
            pool.submit(pooled)  # type: ignore[union-attr]
        if not tasks:
            return

        unplaceable: list[tuple[Task, str]] = []
        with self._lock:
            add = self.in_flight.add
            plain = self._plain_submitter
            for task, spec in zip(tasks, specs):
                timeout = task["timeout"]
                if spec is None:
                    submitter = plain if timeout is None else batch.options(timeout=timeout)
                    watch = self._output_dir / f"{next(self._file_counter)}.worker"  # type: ignore[operator]
                    handle = submitter.function(run_watched, str(watch), task["function"],
                                                task["args"], task["kwargs"])
                    add(task, key=handle.uid, handle=BatchEntry(task, handle, watch_path=watch))
                    continue
                problem = self._placement_problem(spec)
                if problem:
                    unplaceable.append((task, problem))
                    continue
                base = self._output_dir / str(next(self._file_counter))  # type: ignore[operator]
                pid = None if spec.job else base.with_suffix(".pid")
                try:
                    find_program(task, spec)
                    templates = build_templates(task, spec, pid_file=pid)
                except Exception as exc:  # noqa: BLE001 - the task fails, the others go on
                    task["exception"] = exc
                    unplaceable.append((task, ""))
                    continue
                out, err = base.with_suffix(".out"), base.with_suffix(".err")
                if spec.job:
                    # Rank processes are Dragon's own: its walltime is the only timeout they get.
                    handle = batch.options(stdout=str(out), stderr=str(err),
                                           timeout=timeout if timeout is not None else 1e9).job(templates)
                else:
                    # The runner enforces the timeout and kills the program's process group.
                    handle = batch.options(stdout=str(out), stderr=str(err)).process(templates[0][1])
                add(task, key=handle.uid, handle=BatchEntry(task, handle, out, err, pid))
        if self._monitor_thread is None:
            self._monitor_thread = threading.Thread(target=self._monitor, name="rhapsody-dragon-monitor",
                                                    daemon=True)
            self._monitor_thread.start()
        if unplaceable:
            for task, problem in unplaceable:
                if problem:
                    task["exception"] = RuntimeError(f"dragon: task {task['uid']} cannot be placed: {problem}")
            self.report([(task, _FAILED) for task, _ in unplaceable])

    def _placement_problem(self, spec: ProcessSpec) -> str:
        ranks = spec.ranks
        if ranks > self._cores_per_node:
            needed = -(-ranks // self._cores_per_node)
            if needed > self._node_count:
                return (f"{ranks} ranks need {needed} nodes of {self._cores_per_node} cores, "
                        f"and the Batch has {self._node_count} node(s)")
        outside = spec.hostnames - self._hostnames
        if outside:
            return f"policy names host(s) {sorted(outside)} outside the Batch's {sorted(self._hostnames)}"
        return ""

    # -- the monitor -------------------------------------------------------------------------

    def _monitor(self) -> None:
        batch = self._batch
        poll = batch.poll
        results = batch.results_ddict
        results_lock = _compat.results_lock(batch)
        chosen_manager = _compat.chosen_manager
        choose_manager = _compat.manager_chooser(results)
        lock = self._lock
        registry = self.in_flight
        registry_pop = registry.pop
        forget_task = _compat.task_log_forgetter(batch)
        stopping = self._stopping
        from dragon.workflows.batch import TaskCancelledError

        # Entries taken from the registry and results found in the current sweep: if Dragon fails
        # mid-sweep, they are still reported.
        taken: dict[str, BatchEntry] = {}
        cancelled: set[str] = set()  # tuids of taken entries whose task cancel_task reported
        updates: list[tuple[Task, str]] = []
        monotonic = time.monotonic
        next_listing = 0.0
        next_liveness = monotonic() + _LIVENESS_INTERVAL_S
        try:
            while not stopping.is_set():
                if registry and monotonic() >= next_liveness:
                    next_liveness = monotonic() + _LIVENESS_INTERVAL_S
                    self._fail_lost_functions()
                # Batch announces completions per launch group (Pool.map_async calls back when the
                # whole group is done), so a quick task launched with slow ones would wait for them:
                # announced tuids are ready at once, and every _LISTING_INTERVAL_S the results
                # DDict's keys (results written and not yet taken) show the others.
                ready = []
                tuid = poll(_SWEEP_INTERVAL_S)
                while tuid is not None:
                    ready.append(tuid)
                    tuid = poll(0)
                if not registry:
                    continue
                now = monotonic()
                if now >= next_listing:
                    next_listing = now + _LISTING_INTERVAL_S
                    with results_lock:
                        ready += [key for key in results.keys() if key in registry]
                if not ready:
                    continue
                with lock:
                    for tuid in ready:
                        held = registry_pop(tuid)
                        if held is not None:
                            taken[tuid] = held.handle
                            if held.cancelling:
                                cancelled.add(tuid)
                # The results DDict client is shared with Batch's own Task.get(): hold its lock and
                # aim each pop at the shard the task's result was written to.
                with results_lock:
                    chosen = chosen_manager(results)
                    try:
                        for tuid, entry in taken.items():
                            choose_manager(entry.handle.core.result_ddict_idx)
                            value, _traceback, raised = results.pop(tuid)
                            forget_task(tuid, None)
                            if tuid in cancelled:
                                # Reported CANCELED by cancel_task already.
                                cancelled.discard(tuid)
                                drop_output(entry)
                                continue
                            updates.append(self._finish(entry, value, raised, TaskCancelledError))
                    finally:
                        choose_manager(chosen)
                taken.clear()
                if updates:
                    self.report(updates)
                    updates = []
        except BaseException as exc:  # noqa: BLE001 - every task still held must end, never hang
            self._broken = exc
            # Tasks being cancelled were reported CANCELED already.
            left = [held.handle for held in registry.pop_all() if not held.cancelling]
            left += [entry for tuid, entry in taken.items() if tuid not in cancelled]
            taken.clear()
            finished = {id(task) for task, _ in updates}
            left = [entry for entry in left
                    if id(entry.task) not in finished and entry.task["state"] not in _ENDED]
            reason = str(exc) if isinstance(exc, _BatchStalled) else repr(exc)
            for entry in left:
                entry.task["exception"] = RuntimeError(f"dragon: the Batch failed: {reason}")
            updates += [(entry.task, _FAILED) for entry in left]
            if updates:
                self.report(updates)

    def _fail_lost_functions(self) -> None:
        """Fail (as WorkerLostError) the function tasks whose worker process on this host died."""
        # A task being cancelled may see its worker stopped: it ends CANCELED, not lost.
        watched = [(held.key, held.handle) for held in self.in_flight
                   if held.handle.watch_path is not None and not held.cancelling]
        lost: list[tuple[Task, str]] = []
        for tuid, entry in watched:
            try:
                host, pid_text = entry.watch_path.read_text().split()  # type: ignore[union-attr]
                pid = int(pid_text)
            except (OSError, ValueError):
                continue  # not started yet, ended, or being written
            if host != HOST:
                continue  # another node's process: not ours to look at
            dead, code = exit_status(pid)
            if not dead:
                continue
            with self._lock:
                held = self.in_flight.get(tuid)
                if held is None or held.cancelling or self.in_flight.pop(tuid) is None:
                    continue  # cancelled, or its result was taken meanwhile
            entry.watch_path.unlink(missing_ok=True)  # type: ignore[union-attr]
            # Not retryable: this Batch runs nothing more (below), and a retry could only fail.
            entry.task["exception"] = WorkerLostError(
                entry.task["uid"], f"Dragon worker process {pid}", code, retryable=False)
            lost.append((entry.task, _FAILED))
        if lost:
            self.report(lost)
            # Measured on dragonhpc 0.15: once one of its workers has died, a Batch runs no task
            # again, not even the ones already handed to its other workers. Failing them all now
            # (the monitor's failure path) beats leaving them to wait forever.
            raise _BatchStalled(
                f"a worker process of the Batch died while running task {lost[0][0]['uid']}; a "
                "Dragon Batch runs no task after that, so the tasks still in it fail and this "
                "backend takes no more: start a new one (or keep functions that may crash their "
                "process on another backend)"
            )

    @staticmethod
    def _finish(entry: BatchEntry, value: Any, raised: bool,
                cancelled_error: type[BaseException]) -> tuple[Task, str]:
        task = entry.task
        if raised and isinstance(value, cancelled_error):
            drop_output(entry)
            return task, _CANCELED
        if raised:
            task["exception"] = value if isinstance(value, BaseException) else RuntimeError(str(value))
            if entry.stdout_path is not None:
                collect_output(task, entry)
                drop_pid(entry)
            return task, _FAILED
        if entry.stdout_path is None:
            task["return_value"] = value
            return task, _DONE
        # A process returns its exit code, a job one per rank: the first failing rank's counts.
        code = value if isinstance(value, int) else next((c for c in value if c), 0)
        task["exit_code"] = code
        collect_output(task, entry)
        if code == 0:
            drop_pid(entry)
            return task, _DONE
        if code == TIMED_OUT and timed_out(entry):
            task["exception"] = TimeoutError(
                f"task {task['uid']} exceeded its timeout of {task['timeout']} s; its process group was killed"
            )
        drop_pid(entry)
        return task, _FAILED

    # -- cancel, fence, DDicts ---------------------------------------------------------------

    async def cancel_task(self, task: Task) -> bool:
        """Cancel ``task`` unless it has already ended; ``True`` means it ends ``CANCELED``.

        A queued task never starts (Dragon drops it); a running executable's process group is
        killed; a running function is stopped by its worker. The task is reported ``CANCELED`` at
        once, and whatever Dragon later returns for it is discarded.
        """
        pool = self._pool
        if pool is not None and pool.holds(task):
            return await asyncio.to_thread(pool.cancel, task)
        # From here on the monitor drops this task's completion instead of reporting it.
        held = self.in_flight.cancel(task)
        if held is None:
            return False
        entry = held.handle
        # Dragon 0.15 cannot stop a running process whose children live on: kill the group.
        kill_group(entry)
        await asyncio.to_thread(cancel_in_dragon, entry, min(10.0, self._shutdown_timeout))
        self.report([(task, _CANCELED)])
        return True

    async def fence(self, timeout: float | None = None) -> None:
        """Wait until Dragon has run every task this backend submitted so far (pool and Batch).

        Raises:
            RuntimeError: the backend is not started.
            TimeoutError: ``timeout`` seconds passed first.
        """
        if not self._initialized or self._closed:
            raise RuntimeError("dragon: the backend is not started (await it) or has been closed")
        try:
            await asyncio.wait_for(self._fence(timeout), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"dragon: fence did not complete within {timeout} s") from None

    async def _fence(self, timeout: float | None) -> None:
        pool, batch = self._pool, self._batch
        if pool is not None:
            held = pool.pending_tids()
            # The pool reports each result sweep; a short sleep between looks costs no CPU.
            while pool.still_held(held):
                await asyncio.sleep(0.005)
        if batch is not None:
            await asyncio.to_thread(batch.fence, 1e9 if timeout is None else timeout)

    async def create_ddict(self, *, managers_per_node: int = 1, n_nodes: int = 1,
                           total_mem: int = 64 * 1024**2, **options: Any) -> Any:
        """Create a Dragon distributed dictionary (``dragon.data.DDict``) for tasks to share.

        ``options`` go to ``DDict`` unchanged (e.g. ``wait_for_keys``, ``working_set_size``).
        The backend destroys the DDict when it closes, if its user has not already.

        Raises:
            RuntimeError: the backend is not started.
            TypeError, ValueError, DDictError: what ``DDict`` raises for bad options.
        """
        if not self._initialized or self._closed:
            raise RuntimeError("dragon: the backend is not started (await it) or has been closed")
        from dragon.data.ddict.ddict import DDict

        ddict = await asyncio.to_thread(DDict, managers_per_node, n_nodes, total_mem, **options)
        self._ddicts.append(ddict)
        return ddict


def _require_dragon_runtime() -> None:
    from dragon.infrastructure.parameters import this_process

    # Only a process started by the launcher knows where Global Services listens; without it
    # Batch() fails obscurely.
    if not this_process.gs_qd:
        raise RuntimeError(
            "dragon: no Dragon runtime here; start the program with the dragon launcher "
            "(`dragon my_workflow.py`)"
        )
