"""``DaskBackend``: rhapsody tasks as Dask futures, from submit to the session's batched report.

The hot path, top to bottom:

1. ``submit_tasks`` (session loop thread) validates every task, fails at once the ones whose
   resources no worker can supply, groups the rest by their Dask options and hands each group to
   Dask as ONE ``client.map`` call (one graph, one scheduler message per group, not per task).
2. On the client's event loop, one small watcher per future waits for Dask to settle it and
   queues it for the collector. The whole group is handed to that loop in ONE call; Dask's
   ``as_completed`` would cost a cross-thread wake-up and a deep chain of coroutines per future.
3. A collector thread takes the queued futures in batches, fetches all results of a batch with
   ONE ``client.gather``, fills the tasks and hands the batch to ``BaseBackend.report`` (one
   session loop wake-up per batch). It then drops the batch's futures on the client's loop, so
   that releasing their keys costs no cross-thread wake-up per future either.
4. The runners in :mod:`rhapsody_dask.worker` run the tasks inside the Dask workers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rhapsody import BaseBackend, TaskState, WorkerLostError
from rhapsody.backend import check_process_options, is_async_callable
from rhapsody.builtin.worker_markers import (
    WorkerMarkers,
    exit_status,
)
from rhapsody.task import Task

from ._compat import client_event_handler, future_state
from .errors import UnsatisfiableResourcesError
from .resources import check_resources, portable_resources, why_unsatisfiable
from .worker import KILL_GRACE_S, call, call_async, run_executable, still_running

if TYPE_CHECKING:
    from distributed import Client, Future

_log = logging.getLogger(__name__)
_DONE, _FAILED, _CANCELED = TaskState.DONE, TaskState.FAILED, TaskState.CANCELED
_DASK_OPTIONS = frozenset({"resources", "retries", "priority"})
_EXECUTABLE_OPTIONS = _DASK_OPTIONS | {"cwd", "env", "shell"}
_RESOURCE_POLL_S = 1.0
# Completions that arrive within _STREAM_GAP_S of the previous hand-over are part of a stream:
# the collector then waits _BATCH_PATIENCE_S for more before it gathers, so that a stream costs
# one gather round trip per ~0.1 s instead of one per few tasks. A completion after a quiet
# spell is handed over at once.
_BIG_BATCH = 1024
_BATCH_PATIENCE_S = 0.1
_STREAM_GAP_S = 0.5
# Where the backend's own scheduler serves Dask's HTTP routes (health, metrics) when the dashboard
# is off: LocalCluster(dashboard_address=None) would still bind them to port 8787.
_NO_DASHBOARD_ADDRESS = "127.0.0.1:0"
# How long a lost worker's process may take to be gone before its markers are read; a process
# of that pid still alive after it is not the dead worker (see _started_in).
_DEATH_WAIT_S = 2.0


class DaskBackend(BaseBackend):
    """Runs functions (sync and ``async``) and executables on a Dask cluster.

    Args:
        name: this instance's name in a session (default ``"dask"``): two Dask backends (a CPU
            and a GPU cluster, say) live in one session under two names.
        cluster: an existing Dask cluster object (``LocalCluster``, ``SLURMCluster``,
            ``KubeCluster``, ``LocalCUDACluster``, ...). The backend connects its own client to it
            and closes only that client.
        client: an existing ``distributed.Client`` (synchronous or asynchronous), used as is and
            never closed by the backend.
        n_workers, threads_per_worker, processes, worker_resources: shape of the ``LocalCluster``
            the backend starts (and closes) when neither ``cluster`` nor ``client`` is given.
            ``worker_resources`` (e.g. ``{"GPU": 1}``) is advertised by every worker, with
            ``CPU`` set to ``threads_per_worker`` unless given, so portable ``resources=``
            requests for cores run on the own cluster as they are.
        cluster_options: further keyword arguments for that ``LocalCluster``.
        unsatisfiable_timeout: seconds a submitted task that asks for resources may wait after
            the last worker able to supply them left (restarts, adaptive scaling) before it fails
            with :class:`UnsatisfiableResourcesError`. At submit, such a task fails at once. Also
            how long the backend's own cluster may have no worker at all while tasks wait before
            they fail (its workers closed for good).
        close_timeout: seconds each step of shutdown (client, cluster) may take.

    ``ComputeTask(resources=...)`` becomes the Dask resources ``CPU`` (cores), ``GPU`` and
    ``MEMORY`` (MiB), which workers must advertise; ``ranks`` > 1 is refused at submit.

    Per task, ``task_backend_specific_kwargs`` may hold ``resources`` (dict, routes the task to
    workers advertising them), ``priority`` (int, Dask's priority) and, for executables, ``cwd``,
    ``env`` (the whole environment of the process) and ``shell``. ``retries`` (int) is deprecated:
    it is applied as ``ComputeTask(retries=n, retry_exceptions=True)``.

    A task whose worker is lost while executing it is reported ``FAILED`` with
    :class:`rhapsody.WorkerLostError` naming the worker, and the session runs it again up to
    ``task.retries``. Tasks lost with that worker that were only queued on it are handed to Dask
    again by the backend, unreported and uncharged (told apart by the worker markers of
    :mod:`rhapsody.builtin.worker_markers`; for workers on this host only: a lost task of a
    worker on another host is always charged). The backend's own
    cluster is started with ``distributed.scheduler.allowed-failures = 0`` so that the session's
    count is the only one. An injected cluster keeps its own policy: Dask first re-runs such a
    task up to its ``allowed-failures``, and those re-runs count in ``task.retried``.

    The backend's own cluster serves no dashboard unless ``cluster_options`` gives a
    ``dashboard_address`` (e.g. ``":8787"``).

    Raises:
        ValueError: both ``cluster`` and ``client``, a ``LocalCluster`` option together with one of
            them, or a bad number.
    """

    name = "dask"
    task_kinds = frozenset({"function", "executable"})

    def __init__(
        self,
        *,
        cluster: Any = None,
        client: Client | None = None,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool | None = None,
        worker_resources: Mapping[str, float] | None = None,
        cluster_options: Mapping[str, Any] | None = None,
        unsatisfiable_timeout: float = 10.0,
        close_timeout: float = 30.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if cluster is not None and client is not None:
            raise ValueError("dask: pass cluster= or client=, not both")
        own = {
            "n_workers": n_workers, "threads_per_worker": threads_per_worker,
            "processes": processes, "worker_resources": worker_resources,
            "cluster_options": cluster_options,
        }
        if cluster is not None or client is not None:
            given = sorted(k for k, v in own.items() if v is not None)
            if given:
                raise ValueError(
                    f"dask: {', '.join(given)} shape the backend's own LocalCluster and cannot be "
                    "combined with cluster= or client="
                )
        for label, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"dask: {label} must be an integer >= 1, got {value!r}")
        for label, seconds in (("unsatisfiable_timeout", unsatisfiable_timeout),
                               ("close_timeout", close_timeout)):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
                raise ValueError(f"dask: {label} must be a number of seconds >= 0, got {seconds!r}")
        if worker_resources is not None:
            worker_resources = check_resources("(worker_resources)", worker_resources)
        self._given_cluster = cluster
        self._given_client = client
        self._cluster_options = {
            "n_workers": n_workers,
            "threads_per_worker": threads_per_worker or 1,
            "processes": True if processes is None else processes,
            # Each worker offers its threads as CPU: ComputeTask(resources=...) asks for CPU.
            "resources": {"CPU": threads_per_worker or 1, **(worker_resources or {})},
            "dashboard_address": None,
            **dict(cluster_options or {}),
        }
        self._unsatisfiable_timeout = float(unsatisfiable_timeout)
        self._close_timeout = float(close_timeout)
        self._client: Client | None = None
        self._own_client = False
        self._own_cluster: Any = None
        self._salt = uuid.uuid4().hex[:8]
        # Shared with the collector thread, always under _lock.
        self._lock = threading.Lock()
        # self.in_flight holds each task under its current attempt's Dask key, its future as
        # the handle; the dicts below keep what only some attempts have, by the same key.
        self._stopping = False
        self._restricted: dict[str, dict[str, float]] = {}  # dask key -> resources asked
        self._unsatisfiable_since: dict[str, float] = {}
        self._workers_cache: tuple[float, list[dict[str, float]]] | None = None
        self._watcher: asyncio.Task[None] | None = None
        # Futures Dask has settled (finished, erred, cancelled), for the collector; None stops it.
        self._ended: queue.SimpleQueue[Future | None] = queue.SimpleQueue()
        self._collector: threading.Thread | None = None
        self._killed_worker: type[BaseException] | None = None
        self._direct_gather: bool | None = None
        self._dashboard = True  # False only for the own cluster started without one
        self._dumps: Any = None
        # Dask key -> how often a worker was lost while processing it (under _lock): Dask's own
        # re-runs on a cluster with allowed-failures > 0, which it does not report otherwise.
        self._lost_on: dict[str, int] = {}
        self._previous_handler: Any = None
        self._worker_seen = 0.0  # monotonic time of the last worker joining or leaving
        # Which task each worker process is executing, readable once it died (same host only):
        # a task lost with its worker that was not executing there is run again uncharged.
        self._markers: WorkerMarkers | None = None
        self._marker_ids = itertools.count(1)
        self._marker_of: dict[str, int] = {}  # dask key -> its attempt's marker id (under _lock)

    @classmethod
    def check_available(cls) -> None:
        """Raise ``ImportError`` when ``dask.distributed`` is not installed."""
        import distributed  # noqa: F401

    @classmethod
    def engine_versions(cls) -> dict[str, str]:
        """Installed versions of ``dask`` and ``distributed`` (read without importing them)."""
        from importlib.metadata import PackageNotFoundError, version

        found = {}
        for name in ("dask", "distributed"):
            try:
                found[name] = version(name)
            except PackageNotFoundError:
                continue
        return found

    @property
    def client(self) -> Client:
        """The ``distributed.Client`` the backend submits through (after initialisation)."""
        if self._client is None:
            raise RuntimeError("dask: the backend has not been initialised (await it first)")
        return self._client

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard URL, when the cluster serves one (``None`` otherwise)."""
        if self._client is None or not self._dashboard:
            return None
        return getattr(self._client, "dashboard_link", None)

    async def _initialize(self) -> None:
        import dask
        import distributed
        from distributed.protocol.pickle import dumps
        from distributed.scheduler import KilledWorker

        self._killed_worker = KilledWorker
        self._dumps = dumps

        def connect() -> None:
            if self._given_client is not None:
                # Also right for an asynchronous client: the backend calls it blocking only from
                # threads other than its loop's, where Dask runs each call on that loop.
                self._client = self._given_client
                return
            cluster = self._given_cluster
            if cluster is None:
                options = dict(self._cluster_options)
                for unset in ("n_workers", "resources"):
                    if options.get(unset) is None:
                        options.pop(unset, None)
                if options.get("dashboard_address") is None:
                    # LocalCluster(dashboard_address=None) only leaves the dashboard pages out:
                    # its scheduler still listens on 8787. Its HTTP routes go to a free loopback
                    # port instead, without the dashboard.
                    options["dashboard_address"] = _NO_DASHBOARD_ADDRESS
                    options["scheduler_kwargs"] = {
                        **dict(options.get("scheduler_kwargs") or {}), "dashboard": False}
                    self._dashboard = False
                # The scheduler reads this once, at start: a lost worker fails its tasks at once.
                with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                    cluster = distributed.LocalCluster(**options)
                self._own_cluster = cluster
            if isinstance(cluster, distributed.LocalCluster):
                # Its workers are on this machine: fetch results from them directly instead of
                # through the scheduler (which shares this process). Elsewhere Dask's default
                # stands: remote workers may not be reachable from here.
                self._direct_gather = True
            try:
                if getattr(cluster, "asynchronous", False):
                    self._client = distributed.Client(cluster.scheduler_address, set_as_default=False)
                else:
                    self._client = distributed.Client(cluster, set_as_default=False)
            except BaseException:
                if self._own_cluster is not None:
                    self._own_cluster.close(timeout=self._close_timeout)
                    self._own_cluster = None
                raise
            self._own_client = True

        await asyncio.get_running_loop().run_in_executor(None, connect)
        try:
            self._markers = WorkerMarkers()
        except OSError:  # no writable temporary directory: every lost task is charged
            self._markers = None
        client = self._client
        assert client is not None
        # A given client may already have a handler for this topic (one per topic): it is
        # chained, and put back on close.
        self._previous_handler = client_event_handler(client, "all")
        client.subscribe_topic("all", self._on_cluster_event)
        self._collector = threading.Thread(
            target=self._collect, name=f"rhapsody-dask-collect-{self._salt}", daemon=True
        )
        self._collector.start()

    # -- submit ------------------------------------------------------------------------------

    async def check_tasks(self, tasks: Sequence[Task]) -> None:
        """Refuse a task whose options Dask cannot honour (the message names task and key)."""
        for task in tasks:
            _plan(task)

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        if self._stopping:
            raise RuntimeError("dask: the backend is shutting down")
        plans = [_plan(task) for task in tasks]  # raises before anything is submitted
        _apply_deprecated_retries(tasks)
        failed: list[tuple[Task, str]] = []
        if any(plan[1] for plan in plans):
            plans = await self._drop_unsatisfiable(tasks, plans, failed)
        groups: dict[tuple[Any, ...], list[tuple[Task, str]]] = {}
        for task, (group, resources) in zip(tasks, plans):
            if group is None:
                continue
            key = self._key(task)
            members = groups.get(group)
            if members is None:
                groups[group] = [(task, key)]
            else:
                members.append((task, key))
            if resources:
                with self._lock:
                    self._restricted[key] = resources
        for group, members in groups.items():
            try:
                self._map(group, members)
            except Exception:  # noqa: BLE001 - e.g. an argument that cannot be pickled
                # Other groups may already be in Dask, so the call cannot be refused as a whole
                # any more: hand the tasks over one by one and fail only those Dask refuses.
                for task, key in members:
                    try:
                        self._map(group, [(task, key)])
                    except Exception as exc:  # noqa: BLE001 - this task's own reason
                        self._forget(task, key)
                        task["exception"] = exc
                        failed.append((task, _FAILED))
        if failed:
            self.report(failed)
        self._ensure_watcher()

    def _ensure_watcher(self) -> None:
        """Start the worker watcher when tasks need it (on the session's loop)."""
        if self._watcher is None and not self._stopping and self._needs_watch():
            self._watcher = asyncio.get_running_loop().create_task(self._watch_workers())

    def _map(self, group: tuple[Any, ...], members: list[tuple[Task, str]]) -> None:
        """Hand one group of tasks with identical Dask options to Dask as one graph."""
        kind, resources, priority = group
        keys = [key for _, key in members]
        tasks = [task for task, _ in members]
        ids = [next(self._marker_ids) for _ in members]
        markers = self._markers.directory if self._markers is not None else None
        if kind == "executable":
            columns: list[list[Any]] = [
                ids,
                keys,
                [t["executable"] for t in tasks],
                [t["arguments"] for t in tasks],
                [t["task_backend_specific_kwargs"].get("cwd") for t in tasks],
                [t["task_backend_specific_kwargs"].get("env") for t in tasks],
                [bool(t["task_backend_specific_kwargs"].get("shell")) for t in tasks],
                [t["timeout"] for t in tasks],
            ]
            runner: Any = run_executable
        else:
            # Pickled here, unpickled by the task itself: a worker that cannot unpickle what Dask
            # sends it (a function of a module only this process has) drops its connection and
            # closes for good, with its nanny, which fails its tasks and strands every later one.
            # Unpickled inside the task, it fails that task alone, with TaskLoadError.
            dumps = self._dumps
            blobs: dict[int, bytes] = {}
            functions = []
            for t in tasks:
                function = t["function"]
                blob = blobs.get(id(function))
                if blob is None:
                    blob = blobs[id(function)] = dumps(function)
                functions.append(blob)
            columns = [ids, functions, [_pack_arguments(t["args"], t["kwargs"]) for t in tasks]]
            if kind == "async":
                columns.append([t["timeout"] for t in tasks])
                runner = call_async
            else:
                runner = call
        futures = self.client.map(
            runner, *columns, key=keys, pure=False,
            resources=dict(resources) if resources else None, priority=priority or 0,
            markers=markers,
        )
        with self._lock:
            add, marker_of = self.in_flight.add, self._marker_of
            for task, key, future, marker_id in zip(tasks, keys, futures, ids):
                add(task, key=key, handle=future)
                marker_of[key] = marker_id
        self._on_client_loop(self._watch, futures)

    # -- watching (the client's event loop) --------------------------------------------------

    def _on_client_loop(self, callback: Any, *args: Any) -> None:
        loop = self.client.loop
        if loop is None:
            raise RuntimeError("dask: the client's event loop has stopped")
        loop.add_callback(callback, *args)

    def _watch(self, futures: list[Future]) -> None:
        for future in futures:
            # Each watcher stays reachable through the Dask future's state until it settles.
            asyncio.ensure_future(self._await_settled(future))

    async def _await_settled(self, future: Future) -> None:
        # The same wait Dask's own as_completed and add_done_callback make: its future state's
        # event is set when the task finished, erred or was cancelled.
        state = future_state(future)
        if state is not None:  # None only for a future not yet bound to its client
            await state.wait()
        self._ended.put(future)

    def _on_cluster_event(self, event: Any) -> Any:
        """Count the unexpected worker losses each of our tasks went through (client's loop)."""
        message = event[1] if isinstance(event, tuple) and len(event) == 2 else None
        if isinstance(message, dict) and message.get("action") in ("add-worker", "remove-worker"):
            self._worker_seen = time.monotonic()
        if isinstance(message, dict) and message.get("action") == "remove-worker" \
                and not message.get("expected"):
            keys = message.get("processing-tasks") or ()
            with self._lock:
                live, lost_on = self.in_flight, self._lost_on
                for key in keys:
                    if key in live:
                        lost_on[key] = lost_on.get(key, 0) + 1
        previous = self._previous_handler
        return previous(event) if previous is not None else None

    # -- completions (collector thread) ------------------------------------------------------

    def _collect(self) -> None:
        last_handover = 0.0
        while (batch := self._next_batch(time.monotonic() - last_handover < _STREAM_GAP_S)) is not None:
            try:
                self._finish(batch)
            except Exception:  # noqa: BLE001 - the collector must outlive any one batch
                _log.exception("rhapsody-dask: could not hand a batch of completions over")
            last_handover = time.monotonic()
            # Holding the futures would keep their results on the workers. Dropped on the
            # client's loop, each releases its key there without a cross-thread wake-up.
            try:
                self._on_client_loop(batch.clear)
            except Exception:  # noqa: BLE001 - the client's loop has stopped: drop them here
                pass
            del batch

    def _next_batch(self, streaming: bool) -> list[Future] | None:
        """The next futures Dask settled (waiting for the first); ``None`` once the backend stops."""
        ended = self._ended
        first = ended.get()
        if first is None:
            return None
        if streaming:
            time.sleep(_BATCH_PATIENCE_S)
        batch = [first]
        while len(batch) < _BIG_BATCH:
            try:
                future = ended.get_nowait()
            except queue.Empty:
                break
            if future is None:
                ended.put(None)  # stop once this batch is handed over
                break
            batch.append(future)
        return batch

    def _finish(self, batch: list[Future]) -> None:
        finished: list[tuple[Task, Future]] = []
        erred: list[tuple[Task, Future]] = []
        updates: list[tuple[Task, str]] = []
        again: list[Future] = []
        lost_in_erred: dict[int, int] = {}
        marker_ids: dict[int, int] = {}  # id(task) -> marker id of its attempt
        with self._lock:
            live_pop, restricted = self.in_flight.pop, self._restricted
            lost_on, marker_pop = self._lost_on, self._marker_of.pop
            for future in batch:
                key: str = future.key  # type: ignore[assignment]  # the backend's own str keys
                status = future.status
                if status in ("lost", "pending"):
                    # It finished, then its result was lost with its worker before we fetched
                    # it: Dask computes it again (the future is still held), so it is watched
                    # again rather than failed.
                    if key in self.in_flight:
                        again.append(future)
                    continue
                popped = live_pop(key)
                if restricted:
                    restricted.pop(key, None)
                    self._unsatisfiable_since.pop(key, None)
                marker_id = marker_pop(key, None)
                if popped is None:
                    continue  # cancelled or failed by the backend, already reported
                task = popped.task
                entry = (task, future)
                if marker_id is not None:
                    marker_ids[id(task)] = marker_id
                lost = lost_on.pop(key, 0) if lost_on else 0
                if status == "finished":
                    if lost:  # Dask ran it again on another worker that many times
                        task["retried"] = task.get("retried", 0) + lost
                    finished.append(entry)
                elif status == "error":
                    if lost:
                        lost_in_erred[id(task)] = lost
                    erred.append(entry)
                else:
                    # Dask dropped the task without us asking (client or scheduler gone).
                    task["exception"] = RuntimeError(
                        f"task {task['uid']}: Dask reported the task {status} (its scheduler or "
                        "client went away) before it ended"
                    )
                    updates.append((task, _FAILED))
        bystanders: list[tuple[Task, BaseException]] = []
        try:
            self._settle(finished, erred, updates, lost_in_erred, marker_ids, bystanders)
        except BaseException as exc:  # noqa: BLE001 - never lose a task of the batch
            settled = {id(task) for task, _ in updates} | {id(task) for task, _ in bystanders}
            for task, _ in [*finished, *erred]:
                if id(task) not in settled:
                    task["exception"] = exc
                    updates.append((task, _FAILED))
        if bystanders:
            self._resubmit_bystanders(bystanders, updates)
        if updates:
            self.report(updates)
        if again:
            self._on_client_loop(self._watch, again)

    def _settle(
        self,
        finished: list[tuple[Task, Future]],
        erred: list[tuple[Task, Future]],
        updates: list[tuple[Task, str]],
        lost_in_erred: dict[int, int],
        marker_ids: dict[int, int],
        bystanders: list[tuple[Task, BaseException]],
    ) -> None:
        """Fill the result fields of ended tasks; collect their updates.

        ``lost_in_erred``: by ``id(task)``, the worker losses an erred task went through.
        ``marker_ids``: by ``id(task)``, the marker id of an ended task's attempt.
        ``bystanders``: gets the tasks lost with a worker they were not executing in, with their
        ``WorkerLostError``; they are not reported (the caller runs them again).
        """
        started_in: dict[int, set[int] | None] = {}  # dead worker's pid -> marker ids it ran
        if finished:
            futures = [future for _, future in finished]
            try:
                values = self.client.gather(futures, direct=self._direct_gather)
            except BaseException:  # noqa: BLE001 - find which result could not be fetched
                values = [_gather_one(future) for future in futures]
            for (task, _), value in zip(finished, values):
                if isinstance(value, _Unfetchable):
                    error = value.error
                    if self._killed_worker is not None and isinstance(error, self._killed_worker):
                        # It finished, its result was lost with its worker, and the worker
                        # computing it again died too.
                        lost = self._worker_lost(task, error, marker_ids.get(id(task)), started_in)
                        if lost is None:
                            bystanders.append(
                                (task, WorkerLostError(task["uid"], worker=_last_worker(error))))
                            continue
                        error = lost
                        if task["function"] is None:
                            task["stderr"] = f"{type(error).__name__}: {error}"
                    task["exception"] = error
                    updates.append((task, _FAILED))
                elif task["function"] is not None:
                    task["return_value"] = value
                    updates.append((task, _DONE))
                else:
                    updates.append((task, _executable_outcome(task, value)))
        for task, future in erred:
            try:
                error = future.exception()
            except BaseException as exc:  # noqa: BLE001 - the exception itself could not arrive
                error = exc
            if self._killed_worker is not None and isinstance(error, self._killed_worker):
                lost = self._worker_lost(task, error, marker_ids.get(id(task)), started_in)
                if lost is None:
                    bystanders.append((task, WorkerLostError(task["uid"], worker=_last_worker(error))))
                    continue
                error = lost
            elif id(task) in lost_in_erred:  # lost, run again by Dask, then it raised
                task["retried"] = task.get("retried", 0) + lost_in_erred[id(task)]
            if task["function"] is None:
                task["stderr"] = f"{type(error).__name__}: {error}"
            task["exception"] = error
            updates.append((task, _FAILED))

    def _worker_lost(
        self, task: Task, error: BaseException, marker_id: int | None,
        started_in: dict[int, set[int] | None],
    ) -> WorkerLostError | None:
        """The ``WorkerLostError`` a task Dask failed with ``KilledWorker`` ends with, or ``None``
        when it was only queued on the dead worker (it is then run again, uncharged)."""
        rerun_by_dask = getattr(error, "allowed_failures", 0)
        if rerun_by_dask == 0 and self._was_bystander(error, marker_id, started_in):
            return None
        lost = WorkerLostError(task["uid"], worker=_last_worker(error))
        lost.__cause__ = error
        # Dask already ran it again on other workers this many times (a cluster given with its
        # own allowed-failures): they count as the session's re-runs, so that the attempts add
        # up instead of multiplying.
        # Exact, unlike the count of removal events, which may still be on their way.
        if isinstance(rerun_by_dask, int) and rerun_by_dask > 0:
            task["retried"] = task.get("retried", 0) + rerun_by_dask
        return lost

    def _was_bystander(
        self, error: BaseException, marker_id: int | None, started_in: dict[int, set[int] | None]
    ) -> bool:
        """Whether a task Dask failed with ``KilledWorker`` was only queued on the dead worker.

        True only when the dead worker's markers can be read (it ran on this host, and its
        process is gone) and none says it had started this attempt without ending it; when in
        doubt the task is charged as the one that was running.
        """
        markers = self._markers
        worker = getattr(error, "last_worker", None)
        pid = getattr(worker, "pid", None)
        if markers is None or marker_id is None or not isinstance(pid, int) or pid <= 0:
            return False
        if pid not in started_in:
            started_in[pid] = _started_in(markers, pid)
        started = started_in[pid]
        return started is not None and marker_id not in started

    def _resubmit_bystanders(
        self, bystanders: list[tuple[Task, BaseException]], updates: list[tuple[Task, str]]
    ) -> None:
        """Hand tasks lost with a worker they were only queued on to Dask again, under new keys.

        Not reported and not charged a retry. A task that cannot be handed over ends as it
        would have: ``FAILED`` with its ``WorkerLostError`` (the session may still retry it).
        """
        groups: dict[tuple[Any, ...], list[tuple[Task, str]]] = {}
        for task, lost in bystanders:
            if self._stopping:
                updates.append((task, _CANCELED))
                continue
            try:
                group, resources = _plan(task)
            except Exception:  # noqa: BLE001 - it was accepted once; charge it as before
                task["exception"] = lost
                updates.append((task, _FAILED))
                continue
            key = f"{self._key(task)}-q{next(self._marker_ids)}"
            if resources:
                with self._lock:
                    self._restricted[key] = resources
            groups.setdefault(group, []).append((task, key))
        lost_of = {id(task): lost for task, lost in bystanders}
        if groups:
            _log.info("rhapsody-dask: %d task(s) lost with a worker they were only queued on: "
                      "running them again, no retry charged", sum(map(len, groups.values())))
        for group, members in groups.items():
            try:
                self._map(group, members)
            except Exception:  # noqa: BLE001 - client gone: end them as the loss they were
                for task, key in members:
                    self._forget(task, key)
                    if self._stopping:
                        updates.append((task, _CANCELED))
                    else:
                        task["exception"] = lost_of[id(task)]
                        if task["function"] is None:
                            task["stderr"] = f"WorkerLostError: {lost_of[id(task)]}"
                        updates.append((task, _FAILED))
        loop = self._loop
        if groups and loop is not None:
            # The watcher may have ended while these tasks were out of in_flight.
            try:
                loop.call_soon_threadsafe(self._ensure_watcher)
            except RuntimeError:  # the session's loop has closed
                pass

    def _key(self, task: Task) -> str:
        """The Dask key of a task's current attempt (a session re-run gets a new one)."""
        key = f"{_key_prefix(task)}-{self._salt}-{task['uid']}"
        attempt = task.get("retried", 0)
        if attempt:
            # The session runs a failed task again through submit_tasks: Dask must see a new
            # key, or it would hand back the failed attempt's future (or its released key).
            key += f"-r{attempt}"
        return key

    def _forget(self, task: Task, key: str) -> None:
        """Drop what the backend keeps about a task that ends without a Dask future."""
        with self._lock:
            self._restricted.pop(key, None)
            self._unsatisfiable_since.pop(key, None)

    # -- resources ---------------------------------------------------------------------------

    async def _worker_resources(self, *, fresh: bool) -> list[dict[str, float]]:
        cached = self._workers_cache
        if not fresh and cached is not None and time.monotonic() - cached[0] < _RESOURCE_POLL_S:
            return cached[1]
        client = self.client
        info = await asyncio.get_running_loop().run_in_executor(None, client.scheduler_info, -1)
        workers = [dict(w.get("resources") or {}) for w in info.get("workers", {}).values()]
        self._workers_cache = (time.monotonic(), workers)
        return workers

    async def _drop_unsatisfiable(
        self, tasks: Sequence[Task], plans: list[tuple[Any, Any]], failed: list[tuple[Task, str]]
    ) -> list[tuple[Any, Any]]:
        workers = await self._worker_resources(fresh=False)
        kept = []
        for task, plan in zip(tasks, plans):
            resources = plan[1]
            if resources and why_unsatisfiable(resources, workers) is not None:
                # The cache may predate a worker that just joined: decide on fresh information.
                workers = await self._worker_resources(fresh=True)
                why = why_unsatisfiable(resources, workers)
                if why is not None:
                    _refuse(task, UnsatisfiableResourcesError(task["uid"], resources, *why))
                    failed.append((task, _FAILED))
                    kept.append((None, resources))
                    continue
            kept.append(plan)
        return kept

    def _needs_watch(self) -> bool:
        # The own cluster is watched for losing every worker: a worker that closes itself (rather
        # than dying) takes its nanny along, nothing starts it again, and queued tasks would wait
        # forever. On a given cluster no worker may be normal (adaptive scaling, a batch queue).
        return bool(self._restricted) or (self._own_cluster is not None and bool(self.in_flight))

    async def _watch_workers(self) -> None:
        """Fail tasks whose every capable worker left and did not come back in time."""
        workerless_since: float | None = None
        try:
            while self._needs_watch() and not self._stopping:
                await asyncio.sleep(_RESOURCE_POLL_S)
                with self._lock:
                    asked = dict(self._restricted)
                try:
                    workers = await self._worker_resources(fresh=True)
                except Exception:  # noqa: BLE001 - scheduler briefly unreachable: look again later
                    continue
                now = time.monotonic()
                expired: list[tuple[Task, Future]] = []
                if self._own_cluster is not None:
                    await self._restore_workers(len(workers))
                if workers or self._own_cluster is None or (
                        workerless_since is not None and self._worker_seen >= workerless_since):
                    # A worker that joined and died between two looks counts as one: workers
                    # that keep dying at once (tasks that crash them, queued first) are not gone.
                    workerless_since = None
                elif workerless_since is None:
                    workerless_since = now
                elif now - workerless_since >= self._unsatisfiable_timeout:
                    self._fail_all_waiting(now - workerless_since)
                    asked = {}
                since = self._unsatisfiable_since
                with self._lock:
                    for key, resources in asked.items():
                        why = why_unsatisfiable(resources, workers)
                        if why is None:
                            since.pop(key, None)
                            continue
                        first = since.setdefault(key, now)
                        if now - first < self._unsatisfiable_timeout:
                            continue
                        popped = self.in_flight.pop(key)
                        if popped is None:
                            continue
                        task, future = popped.task, popped.handle
                        self._lost_on.pop(key, None)
                        self._marker_of.pop(key, None)
                        self._restricted.pop(key, None)
                        since.pop(key, None)
                        _refuse(task, UnsatisfiableResourcesError(
                            task["uid"], resources, why[0],
                            why[1] + f"; waited {self._unsatisfiable_timeout:g} s for one to join",
                        ))
                        expired.append((task, future))
                if expired:
                    self.report([(task, _FAILED) for task, _ in expired])
                    await self._cancel_futures([future for _, future in expired])
        finally:
            self._watcher = None

    async def _restore_workers(self, registered: int) -> None:
        """Start the own cluster's workers again where a nanny gave up on one.

        A nanny whose worker keeps dying (a task that ends its process on every attempt) may
        close for good, and the LocalCluster then forgets that worker; with every worker gone,
        the rest of the run could never start. ``scale`` to its own size starts the missing ones
        and leaves the running and restarting ones alone.
        """
        cluster = self._own_cluster
        spec = getattr(cluster, "worker_spec", None)
        if cluster is None or spec is None or registered >= len(spec) \
                or len(getattr(cluster, "workers", spec)) >= len(spec):
            return
        _log.warning("rhapsody-dask: starting %d lost worker(s) of the LocalCluster again",
                     len(spec) - len(cluster.workers))
        await asyncio.get_running_loop().run_in_executor(None, cluster.scale, len(spec))

    def _fail_all_waiting(self, waited: float) -> None:
        with self._lock:
            self._restricted.clear()
            self._unsatisfiable_since.clear()
            self._lost_on.clear()
            self._marker_of.clear()
        # Nothing to cancel: the cluster has no worker that could be running them.
        self.fail_in_flight(lambda task: RuntimeError(
            f"task {task['uid']}: the backend's Dask LocalCluster has had no worker for "
            f"{waited:.0f} s (its workers closed and were not restarted; their log above "
            "says why), so the task could not run"
        ))

    # -- cancel and shutdown -----------------------------------------------------------------

    async def cancel_task(self, task: Task) -> bool:
        with self._lock:
            entry = self.in_flight.pop_task(task)
            if entry is not None:
                self._restricted.pop(entry.key, None)
                self._lost_on.pop(entry.key, None)
                self._marker_of.pop(entry.key, None)
        if entry is None:
            return False
        # Reported first: whatever the future does next, the collector no longer owns the task.
        self.report([(task, _CANCELED)])
        await self._cancel_futures([entry.handle])
        return True

    async def _cancel_futures(self, futures: list[Future]) -> None:
        # A pending task is then dropped by the scheduler; a running executable's runner sees
        # its key cancelled on the worker and kills the process group.
        client = self.client
        await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, client.cancel, futures),
            self._close_timeout,
        )

    async def _shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            entries = [(entry.task, entry.handle) for entry in self.in_flight.pop_all()]
            self._restricted.clear()
            self._lost_on.clear()
            self._marker_of.clear()
        if self._watcher is not None:
            # It would otherwise sleep on past the session's loop, which may close right after.
            self._watcher.cancel()
        if entries:
            self.report([(task, _CANCELED) for task, _ in entries])
        loop = asyncio.get_running_loop()
        try:
            if entries and self._client is not None:
                try:
                    await self._cancel_futures([future for _, future in entries])
                    running = [str(f.key) for t, f in entries if t["function"] is None]
                    if running:
                        await loop.run_in_executor(None, self._drain_runners, running)
                except Exception:  # noqa: BLE001 - the cluster may already be gone; still close
                    pass
        finally:
            await loop.run_in_executor(None, self._close_engine)
        if self._collector is not None:
            self._ended.put(None)
            await loop.run_in_executor(None, self._collector.join, self._close_timeout)

    def _drain_runners(self, keys: list[str]) -> None:
        """Wait (bounded) until cancelled executables have killed their process groups.

        A worker keeps running a cancelled task until its runner notices; closing the cluster
        before that would orphan the program (it runs in its own session).
        """
        deadline = time.monotonic() + KILL_GRACE_S * 2 + 2
        while time.monotonic() < deadline:
            busy = self.client.run(still_running, keys)
            if not any(busy.values()):
                return
            time.sleep(0.1)

    def _close_engine(self) -> None:
        client, cluster = self._client, self._own_cluster
        if client is not None and not self._own_client:
            try:  # leave the given client's event handlers as they were
                if self._previous_handler is not None:
                    client.subscribe_topic("all", self._previous_handler)
                else:
                    client.unsubscribe_topic("all")
            except Exception:  # noqa: BLE001 - a client already closed has none to restore
                pass
        try:
            if client is not None and self._own_client:
                client.close(timeout=self._close_timeout)
        finally:
            if cluster is not None:
                cluster.close(timeout=self._close_timeout)
                self._own_cluster = None
            if self._markers is not None:
                self._markers.close()


def _plan(task: Task) -> tuple[tuple[Any, ...], dict[str, float] | None]:
    """Check a task's options; return its Dask group and the resources it asks for.

    Raises:
        ValueError, TypeError: an option the backend cannot honour (the message names it).
    """
    uid = task["uid"]
    options = task["task_backend_specific_kwargs"]
    executable = task["function"] is None
    if executable:
        kind = "executable"
        if not task["capture_stdio"]:
            raise ValueError(
                f"task {uid}: capture_stdio=False is not supported on Dask: the program runs on a "
                "worker, whose output does not reach this terminal (its output is captured into "
                "task.stdout and task.stderr instead; drop capture_stdio=False)"
            )
    else:
        kind = "async" if is_async_callable(task["function"]) else "sync"
        if kind == "sync" and task["timeout"] is not None:
            raise ValueError(
                f"task {uid}: Dask cannot interrupt a running sync function, so timeout= works "
                "only for async functions and executables"
            )
    # ComputeTask(resources=...) as Dask resources; task_backend_specific_kwargs["resources"],
    # in Dask's own terms, replaces them where given (ranks > 1 is refused either way).
    resources, priority = portable_resources(task), None
    if options:
        allowed = _EXECUTABLE_OPTIONS if executable else _DASK_OPTIONS
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(
                f"task {uid}: dask does not understand task_backend_specific_kwargs "
                f"{sorted(unknown)} for {task.kind} tasks (it takes {sorted(allowed)})"
            )
        if "resources" in options and options["resources"] is not None:
            resources = check_resources(uid, options["resources"]) or None
        for label in ("retries", "priority"):
            value = options.get(label)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"task {uid}: {label} must be an integer, got {value!r}")
        priority = options.get("priority")
        retries = options.get("retries")
        if retries is not None:
            if retries < 0:
                raise ValueError(f"task {uid}: retries must be >= 0, got {retries!r}")
            # Given explicitly (dict.get: not the defaults) and otherwise, the task would say two
            # different things; the same values are what an earlier submit of this task set.
            asked = dict.get(task, "retries", retries), dict.get(task, "retry_exceptions", True)
            if asked != (retries, True):
                raise ValueError(
                    f"task {uid}: task_backend_specific_kwargs retries={retries} (deprecated) "
                    "conflicts with the task's own retries/retry_exceptions; give only "
                    "ComputeTask(retries=..., retry_exceptions=...)"
                )
        if executable:
            check_process_options(uid, options)
    frozen = tuple(sorted(resources.items())) if resources else None
    return (kind, frozen, priority), resources


def _refuse(task: Task, error: BaseException) -> None:
    """Fail a task the cluster could not run: an executable also gets the message as its
    ``stderr`` and no ``exit_code`` (it never ran), as the core reports such executables."""
    task["exception"] = error
    if task["function"] is None:
        task["stderr"] = str(error)
        task["exit_code"] = None


def _apply_deprecated_retries(tasks: Sequence[Task]) -> None:
    """``task_backend_specific_kwargs["retries"] = n`` becomes the session's own retry policy.

    It used to mean both Dask's ``retries=`` (re-run a task that raised) and a resubmission after
    a lost worker, each up to n times: now one count, kept by the session, as
    ``ComputeTask(retries=n, retry_exceptions=True)``. Passing it to Dask as well would multiply
    the attempts (each session re-run would get n more from Dask).
    """
    for task in tasks:
        options = task["task_backend_specific_kwargs"]
        retries = options.get("retries") if options else None
        if retries is None:
            continue
        if not dict.__contains__(task, "retry_exceptions"):
            warnings.warn(
                "rhapsody-dask: task_backend_specific_kwargs['retries'] is deprecated; write "
                f"ComputeTask(retries={retries}, retry_exceptions=True) (task {task['uid']})",
                DeprecationWarning, stacklevel=4,
            )
        task["retries"] = retries
        task["retry_exceptions"] = True


def _pack_arguments(args: Any, kwargs: Any) -> bytes | None:
    # cloudpickle, not pickle: a class of a module registered to be pickled by value (a workload
    # file run by path) must travel by value inside the arguments too.
    if not args and not kwargs:
        return None
    import cloudpickle

    return cloudpickle.dumps((tuple(args), dict(kwargs)), protocol=pickle.HIGHEST_PROTOCOL)


def _key_prefix(task: Task) -> str:
    """The part of a task's Dask key that Dask groups tasks by (its "task prefix").

    Dask keeps statistics per prefix and walks them when it places each task, so a prefix must
    repeat across tasks (the function's or program's name, as Dask itself does); the salt and
    uid that make the key unique follow it as words Dask's ``key_split`` drops.
    """
    function = task["function"]
    if function is not None:
        name = getattr(function, "__name__", None) or type(function).__name__
    else:
        name = os.path.basename(task["executable"].split(maxsplit=1)[0] or "") or "executable"
    return name.replace("-", "_")


def _executable_outcome(task: Task, value: tuple[int, str, str, str | None]) -> str:
    code, out, err, stopped = value
    task["exit_code"], task["stdout"], task["stderr"] = code, out, err
    if stopped == "timeout":
        task["exception"] = TimeoutError(
            f"task {task['uid']} exceeded its timeout of {task['timeout']} s; its process group "
            "was killed"
        )
        return _FAILED
    return _DONE if code == 0 else _FAILED


class _Unfetchable:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _gather_one(future: Future) -> Any:
    try:
        return future.result()
    except BaseException as exc:  # noqa: BLE001 - e.g. a result that cannot be unpickled here
        return _Unfetchable(exc)


class _MarkerSlot(WorkerMarkers):
    """One slot directory of a backend's marker directory (read only; made by the workers)."""

    def __init__(self, directory: str) -> None:  # noqa: D107 - no new directory, unlike its base
        self.directory = directory


def _started_in(markers: WorkerMarkers, pid: int) -> set[int] | None:
    """Marker ids of the tasks the dead worker process ``pid`` had started and not ended.

    ``None`` when that cannot be told: no marker of that pid is in this host's directory (a
    worker of another host, or one that never started a task), or a process of that pid is
    still alive here after ``_DEATH_WAIT_S`` (another host's worker whose pid a process here
    has, or a worker the scheduler dropped that did not die).
    """
    if _read_started(markers, pid) is None:
        return None
    # The scheduler may hear of the death (its connection closing) while the kernel still tears
    # the process down; once dead, its markers say their last.
    deadline = time.monotonic() + _DEATH_WAIT_S
    while not exit_status(pid)[0]:
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)
    return _read_started(markers, pid)


def _read_started(markers: WorkerMarkers, pid: int) -> set[int] | None:
    try:
        slots = os.listdir(markers.directory)
    except OSError:
        return None
    found = False
    started: set[int] = set()
    for slot in slots:
        for marker_id, (owner, index) in _MarkerSlot(os.path.join(markers.directory, slot)).read().items():
            if owner == pid:
                found = True
                if index == 0:
                    started.add(marker_id)
    return started if found else None


def _last_worker(error: BaseException) -> str | None:
    worker = getattr(error, "last_worker", None)
    return getattr(worker, "address", None) if worker is not None else None
