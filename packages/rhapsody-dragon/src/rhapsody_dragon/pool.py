"""``FunctionPool``: function tasks on long-lived Dragon worker processes, in chunks.

Built from Dragon's own parts, as ``dragon.native.Pool`` is: one ``ProcessGroup`` (restarting
workers that exit) whose workers run :func:`rhapsody_dragon.worker.serve`, a task ``Queue`` and a
results ``Queue``. Unlike ``Pool`` it knows, per task, what a dead worker was running (see
:mod:`rhapsody_dragon.worker`), so a worker death fails one task and the pool keeps running.

Dispatch: submitted tasks wait in a backlog here; at most four chunks per worker are in Dragon's
hands at a time, each ``ceil(backlog / (4 * workers))`` tasks long (at least 1, at most
``chunk_size``). A lone task on an idle pool therefore goes out at once, alone, and a burst goes
out in big chunks. Each result sweep of the monitor thread refills what the workers took. Keeping
the rest here is also what lets ``cancel`` stop a queued task for certain.
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
import queue
import signal
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from rhapsody import Task, WorkerLostError
from rhapsody.builtin.worker_markers import exit_status

from .leftovers import prefix, remove_stale
from .worker import HOST, STOP, progress_path, read_progress, serve

_DONE = "DONE"
_FAILED = "FAILED"
_CANCELED = "CANCELED"
# How long the monitor waits on the results queue when no chunk is out. Each wait on a Dragon
# queue spins for up to ~0.1 s before it sleeps (Dragon's adaptive wait), so a short timeout,
# repeated, keeps a core busy: 0.05 s cost half a core on an idle pool. A result that comes in the
# spin is seen at once; later, within a few ms.
_IDLE_WAIT_S = 5.0
CHUNKS_PER_WORKER = 4
# While chunks are out, how often the monitor looks for dead workers on this node, and how long
# it leaves Dragon to start a replacement before it handles the loss itself.
_LIVENESS_INTERVAL_S = 1.0
REPLACEMENT_GRACE_S = 10.0


# A chunk not yet pickled: its id, its tids, its distinct functions, and the entry of each tid,
# (timeout, index of its function, args, kwargs).
_Outgoing = tuple[int, list[int], list[Any], list[tuple[Any, ...]]]


def _pickling_error(value: Any) -> Exception | None:
    """What ``cloudpickle.dumps(value)`` raises, or None."""
    try:
        cloudpickle.dumps(value)
    except Exception as exc:  # noqa: BLE001 - returned: the caller fails the task with it
        return exc
    return None


@dataclass
class _Chunk:
    tids: list[int]  # in the order the worker runs them
    pending: set[int]  # those whose result has not come back yet


@dataclass
class _Slot:
    host: str
    pid: int
    replaced: int = 0  # how many of its workers died
    gone_since: float | None = None  # when its process was first seen dead (this node only)


class FunctionPool:
    """Worker processes placed ``workers_per_node`` per node on ``hosts``, fed in chunks.

    ``report`` is the backend's thread-safe :meth:`rhapsody.BaseBackend.report`.
    """

    def __init__(self, report: Callable[[list[tuple[Task, str]]], None], *, hosts: Sequence[str],
                 workers_per_node: int, chunk_size: int, start_timeout: float) -> None:
        self._report = report
        self._hosts = list(hosts)
        self.workers = workers_per_node * len(self._hosts)
        self._workers_per_node = workers_per_node
        self._chunk_size = chunk_size
        self._start_timeout = start_timeout
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
        # Each node's workers make this directory on their own node; the last one out removes it
        # (and, on this node, the next pool after a client killed before its workers could).
        remove_stale(base)
        self._progress_dir = str(base / f"{prefix()}{uuid.uuid4().hex[:12]}")

        self._group: Any = None
        self._tasks_queue: Any = None
        self._results_queue: Any = None
        self._slots: dict[int, _Slot] = {}
        self._tids = itertools.count(1)
        self._chunk_ids = itertools.count(1)
        # Every task the pool holds, by tid; a cancelled one leaves at once (its result, if one
        # comes, is dropped).
        self._tasks: dict[int, Task] = {}
        self._tid_of: dict[str, int] = {}
        self._solo: set[int] = set()  # tids a worker could not unpickle in a chunk: sent alone
        self._backlog: deque[int] = deque()
        self._chunks: dict[int, _Chunk] = {}
        self._chunk_of: dict[int, int] = {}  # tid -> chunk id, while dispatched
        self._killed: set[int] = set()  # slots whose worker cancel killed (their loss is no failure)
        self._lock = threading.Lock()
        self._put_lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self._stopping = threading.Event()
        self.broken: BaseException | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers and wait until each has said hello (bounded by ``start_timeout``).

        Raises:
            TimeoutError: not every worker started in time (the group is stopped again).
        """
        from dragon.infrastructure.policy import Policy
        from dragon.native.process import ProcessTemplate
        from dragon.native.process_group import ProcessGroup
        from dragon.native.queue import Queue

        # Room for every chunk the pool lets out plus one STOP per worker, so that a put never
        # waits for a worker (Dragon's default is 100 items; a big pool has more chunks out).
        capacity = (CHUNKS_PER_WORKER + 1) * self.workers + 16
        self._tasks_queue = Queue(maxsize=capacity)
        self._results_queue = Queue(maxsize=capacity)
        group = ProcessGroup(restart=True, ignore_error_on_exit=True)
        slot = 0
        for host in self._hosts:
            policy = Policy(placement=Policy.Placement.HOST_NAME, host_name=host)
            for _ in range(self._workers_per_node):
                # One template per slot: a restarted worker gets its slot's template again, so it
                # knows which progress file its predecessor left.
                group.add_process(1, ProcessTemplate(serve, args=(slot, self._tasks_queue, self._results_queue,
                                                                  self._progress_dir), policy=policy))
                slot += 1
        group.init()
        self._group = group
        group.start()
        deadline = time.monotonic() + self._start_timeout
        while len(self._slots) < self.workers:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close(patience=2.0)
                raise TimeoutError(f"dragon: {self.workers - len(self._slots)} of {self.workers} pool workers "
                                   f"did not start within {self._start_timeout} s")
            try:
                message = pickle.loads(self._results_queue.get(timeout=min(left, 1.0)))
            except queue.Empty:
                continue
            if message[0] == "hello":
                _, slot_id, host, pid, _lost = message
                self._slots[slot_id] = _Slot(host, pid)
        self._monitor = threading.Thread(target=self._watch, name="rhapsody-dragon-pool", daemon=True)
        self._monitor.start()

    def close(self, patience: float = 5.0) -> list[Task]:
        """Stop the workers (what runs is killed) and return the tasks still held (the session
        ends them ``CANCELED``). Bounded: about ``3 * patience`` + 5 s."""
        self._stopping.set()
        if self._monitor is not None:
            try:
                self._results_queue.put(pickle.dumps(("wake",)), timeout=1.0)  # ends the monitor's wait
            except Exception:  # noqa: BLE001 - the join below is bounded anyway
                pass
            self._monitor.join(5.0)
        left = self._drop_all()
        group, self._group = self._group, None
        if group is not None:
            try:
                group.stop_restart()
                # Workers between tasks leave at once on STOP; stop() signals those still busy.
                for _ in range(self.workers):
                    self._tasks_queue.put(STOP, timeout=1.0)
                group.join(timeout=patience)
            except Exception:  # noqa: BLE001 - a group that does not wind down is stopped below
                pass
            try:
                group.stop(patience=patience)
            except Exception:  # noqa: BLE001 - already stopped
                pass
            try:
                group.close(patience=patience)
            except Exception:  # noqa: BLE001 - its manager is gone already
                pass
        for channel in (self._tasks_queue, self._results_queue):
            if channel is not None:
                try:
                    channel.destroy()
                except Exception:  # noqa: BLE001 - the runtime is going down
                    pass
        # This node's progress directory, if a killed worker left it.
        for path in Path(self._progress_dir).glob("slot-*"):
            path.unlink(missing_ok=True)
        try:
            Path(self._progress_dir).rmdir()
        except OSError:
            pass
        return left

    # -- submit, cancel, fence ---------------------------------------------------------------

    def submit(self, tasks: Sequence[Task]) -> None:
        """Queue function tasks (sent at once when workers are free)."""
        with self._lock:
            if self.broken is not None:
                raise RuntimeError(f"dragon: the worker pool failed earlier: {self.broken!r}") from self.broken
            held, tid_of, backlog = self._tasks, self._tid_of, self._backlog
            for task in tasks:
                tid = next(self._tids)
                held[tid] = task
                tid_of[task["uid"]] = tid
                backlog.append(tid)
            outgoing = self._take_chunks()
        self._send(outgoing)

    def holds(self, task: Task) -> bool:
        """Whether ``task`` is in this pool (queued or running)."""
        return task["uid"] in self._tid_of

    def cancel(self, task: Task) -> bool:
        """Cancel a pool task: ``True`` when it ends ``CANCELED`` (reported here).

        A task still in the backlog never starts. A task already handed to a worker is stopped
        when it runs on this node (its worker is killed and replaced; the rest of its chunk runs
        again); otherwise it cannot be stopped and ``False`` is returned.
        """
        with self._lock:
            tid = self._tid_of.get(task["uid"])
            if tid is None:
                return False
            chunk_id = self._chunk_of.get(tid)
            if chunk_id is None:
                self._forget(tid)  # still in the backlog: _take_chunks skips it
                cancelled = True
            else:
                cancelled = self._kill_running(tid, chunk_id)
                if cancelled:
                    self._forget(tid)
                    self._chunks[chunk_id].pending.discard(tid)
        if cancelled:
            self._report([(task, _CANCELED)])
        return cancelled

    def pending_tids(self) -> set[int]:
        """The tids of the tasks the pool holds now (for a fence)."""
        with self._lock:
            return set(self._tasks)

    def still_held(self, tids: set[int]) -> bool:
        """Whether any of ``tids`` is still held (not ended)."""
        tasks = self._tasks
        return any(tid in tasks for tid in tids)

    def _drop_all(self) -> list[Task]:
        """Forget every task held; returns them."""
        with self._lock:
            left = list(self._tasks.values())
            for table in (self._tasks, self._tid_of, self._solo, self._chunk_of, self._chunks):
                table.clear()
            self._backlog.clear()
        return left

    # -- inside, under self._lock ------------------------------------------------------------

    def _forget(self, tid: int) -> Task | None:
        task = self._tasks.pop(tid, None)
        if task is not None:
            self._tid_of.pop(task["uid"], None)
        self._solo.discard(tid)
        self._chunk_of.pop(tid, None)
        return task

    def _take_chunks(self) -> list[_Outgoing]:
        """Cut chunks from the backlog while fewer than CHUNKS_PER_WORKER per worker are out."""
        outgoing: list[_Outgoing] = []
        backlog, tasks, solo, chunk_of = self._backlog, self._tasks, self._solo, self._chunk_of
        limit = CHUNKS_PER_WORKER * self.workers
        while backlog and len(self._chunks) < limit:
            size = min(self._chunk_size, max(1, math.ceil(len(backlog) / limit)))
            tids: list[int] = []
            while backlog and len(tids) < size:
                tid = backlog[0]
                if tid not in tasks:  # cancelled while queued
                    backlog.popleft()
                    continue
                if tid in solo and tids:
                    break  # it goes in a chunk of its own, next
                tids.append(backlog.popleft())
                if tid in solo:
                    break
            if not tids:
                break
            chunk_id = next(self._chunk_ids)
            self._chunks[chunk_id] = _Chunk(tids, set(tids))
            entries = []
            functions: list[Any] = []
            index_of: dict[int, int] = {}  # id(function) -> its index in functions (which keeps it alive)
            stored = dict.get  # a task stores only the fields it was given (see _specs in backend.py)
            for tid in tids:
                chunk_of[tid] = chunk_id
                task = tasks[tid]
                function = stored(task, "function")
                index = index_of.get(id(function))
                if index is None:
                    index = index_of[id(function)] = len(functions)
                    functions.append(function)
                entries.append((stored(task, "timeout"), index, stored(task, "args", ()),
                                stored(task, "kwargs") or {}))
            outgoing.append((chunk_id, tids, functions, entries))
        return outgoing

    def _kill_running(self, tid: int, chunk_id: int) -> bool:
        # Only a worker on this node can be seen running the task (its progress file) and killed.
        chunk = self._chunks[chunk_id]
        position = chunk.tids.index(tid) + 1
        for slot_id, slot in self._slots.items():
            if slot.host != HOST:
                continue
            running_chunk, running_position, pid = read_progress(progress_path(self._progress_dir, slot_id))
            if (running_chunk, running_position) == (chunk_id, position) and pid:
                self._killed.add(slot_id)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return True
        return False

    # -- the monitor -------------------------------------------------------------------------

    def _send(self, outgoing: list[_Outgoing]) -> None:
        """Pickle and put chunks (outside the lock); a chunk that cannot be pickled is split.

        The functions are pickled apart from the entries (see :func:`rhapsody_dragon.worker.serve`),
        so that a worker that cannot load a chunk's one function fails its tasks at once.
        """
        put = self._tasks_queue.put
        dumps = cloudpickle.dumps
        while outgoing:
            unpicklable: list[_Outgoing] = []
            for chunk in outgoing:
                chunk_id, tids, functions, entries = chunk
                try:
                    payload = pickle.dumps((len(functions), tids, dumps(functions, pickle.HIGHEST_PROTOCOL),
                                            dumps(entries, pickle.HIGHEST_PROTOCOL)), pickle.HIGHEST_PROTOCOL)
                except Exception:  # noqa: BLE001 - one of its tasks cannot be pickled: find which
                    unpicklable.append(chunk)
                    continue
                with self._put_lock:  # the loop thread and the monitor both send
                    put(chunk_id.to_bytes(8, "little") + payload)
            outgoing = self._refuse_unpicklable(unpicklable) if unpicklable else []

    def _refuse_unpicklable(self, chunks: list[_Outgoing]) -> list[_Outgoing]:
        """Fail the tasks of ``chunks`` that cannot be pickled; the others go back to the backlog."""
        refused: list[tuple[Task, str]] = []
        with self._lock:
            again: list[int] = []
            for chunk_id, tids, functions, entries in chunks:
                self._chunks.pop(chunk_id, None)
                # Each function is tried once, however many tasks share it.
                function_errors: dict[int, Exception | None] = {}
                for tid, (_timeout, index, args, kwargs) in zip(tids, entries):
                    self._chunk_of.pop(tid, None)
                    if index not in function_errors:
                        function_errors[index] = _pickling_error(functions[index])
                    error = function_errors[index] or _pickling_error((args, kwargs))
                    if error is not None:
                        task = self._forget(tid)
                        if task is not None:
                            task["exception"] = TypeError(
                                f"dragon: task {task['uid']}: its function or arguments cannot be pickled "
                                f"for a worker process: {error!r}")
                            refused.append((task, _FAILED))
                        continue
                    again.append(tid)
            self._backlog.extendleft(reversed(again))
            outgoing = self._take_chunks()
        if refused:
            self._report(refused)
        return outgoing

    def _watch(self) -> None:
        get = self._results_queue.get
        loads = pickle.loads
        stopping = self._stopping
        messages: list[Any] = []
        monotonic = time.monotonic
        next_look = monotonic() + _LIVENESS_INTERVAL_S
        try:
            while not stopping.is_set():
                # One message per sweep, no draining get(block=False) after it: each call into
                # Dragon lets go of the GIL, and taking it back from a busy event loop thread can
                # cost a whole switch interval (5 ms). A message holds a chunk's results.
                # While chunks are out, the wait ends in time for the next liveness look.
                wait = max(0.0, next_look - monotonic()) if self._chunks else _IDLE_WAIT_S
                try:
                    messages.append(loads(get(timeout=wait)))
                except queue.Empty:
                    pass
                now = monotonic()
                look = now >= next_look and bool(self._chunks)
                if not (messages or look):
                    continue
                updates: list[tuple[Task, str]] = []
                with self._lock:
                    if look:
                        next_look = now + _LIVENESS_INTERVAL_S
                        self._reap_unreplaced(now, updates)
                    for message in messages:
                        if message[0] == "done":
                            self._take_results(message[1], message[2], message[3], updates)
                        elif message[0] == "hello":
                            _, slot_id, host, pid, lost = message
                            self._worker_started(slot_id, host, pid, lost, updates)
                        elif message[0] == "unloadable":
                            self._unloadable(message[1], message[2], updates)
                    outgoing = self._take_chunks()
                messages.clear()
                self._send(outgoing)
                if updates:
                    self._report(updates)
        except BaseException as exc:  # noqa: BLE001 - every task still held must end, never hang
            self.broken = exc
            left = self._drop_all()
            for task in left:
                task["exception"] = RuntimeError(f"dragon: the worker pool failed: {exc!r}")
            if left:
                self._report([(task, _FAILED) for task in left])

    def _take_results(self, chunk_id: int, results: list[tuple[int, bool, bytes]], final: bool,
                      updates: list[tuple[Task, str]]) -> None:
        loads = pickle.loads
        chunk = self._chunks.get(chunk_id)
        pending = chunk.pending if chunk is not None else set()
        tasks_pop, tid_of_pop, chunk_of_pop, solo = self._tasks.pop, self._tid_of.pop, self._chunk_of.pop, self._solo
        for tid, ok, value in results:
            # What _forget does, inlined: this runs once per task.
            pending.discard(tid)
            chunk_of_pop(tid, None)
            task = tasks_pop(tid, None)
            if task is None:
                continue  # cancelled meanwhile
            tid_of_pop(task["uid"], None)
            if solo:
                solo.discard(tid)
            try:
                result = loads(value)
            except Exception as exc:  # noqa: BLE001 - e.g. the result's class is not importable here
                task["exception"] = RuntimeError(f"dragon: task {task['uid']}: its result could not be "
                                                 f"unpickled here: {exc!r}")
                updates.append((task, _FAILED))
                continue
            if ok:
                task["return_value"] = result
                updates.append((task, _DONE))
            else:
                task["exception"] = result
                updates.append((task, _FAILED))
        if final:
            self._chunks.pop(chunk_id, None)

    def _unloadable(self, chunk_id: int, error: str, updates: list[tuple[Task, str]]) -> None:
        # A worker could not unpickle the chunk: a lone task fails with why; a bigger chunk's
        # tasks go again one by one, so that only those that cannot be unpickled fail.
        chunk = self._chunks.pop(chunk_id, None)
        if chunk is None:
            return
        pending = [tid for tid in chunk.tids if tid in chunk.pending and tid in self._tasks]
        for tid in pending:
            self._chunk_of.pop(tid, None)
        if len(chunk.tids) == 1:
            for tid in pending:
                task = self._forget(tid)
                if task is not None:
                    task["exception"] = RuntimeError(f"dragon: task {task['uid']}: a pool worker could not "
                                                     f"unpickle its function or arguments: {error}")
                    updates.append((task, _FAILED))
            return
        self._solo.update(pending)
        self._backlog.extendleft(reversed(pending))

    def _worker_started(self, slot_id: int, host: str, pid: int, lost: tuple[int, int, int],
                        updates: list[tuple[Task, str]]) -> None:
        previous = self._slots.get(slot_id)
        self._slots[slot_id] = _Slot(host, pid, previous.replaced + 1 if previous else 0)
        self._take_loss(slot_id, host, lost, updates)

    def _reap_unreplaced(self, now: float, updates: list[tuple[Task, str]]) -> None:
        """Handle, as its replacement would, the loss of a worker on this node that Dragon has
        not replaced within REPLACEMENT_GRACE_S (its progress file is readable here)."""
        for slot_id, slot in list(self._slots.items()):
            if slot.host != HOST or not exit_status(slot.pid)[0]:
                slot.gone_since = None
                continue
            if slot.gone_since is None:
                slot.gone_since = now
            elif now - slot.gone_since >= REPLACEMENT_GRACE_S:
                # A replacement that still comes reads the same file; the chunk is gone by then.
                del self._slots[slot_id]
                self._take_loss(slot_id, slot.host, read_progress(progress_path(self._progress_dir, slot_id)),
                                updates)
        if not self._slots and self._tasks:
            raise RuntimeError("every pool worker died and Dragon started none in their place")

    def _take_loss(self, slot_id: int, host: str, lost: tuple[int, int, int],
                   updates: list[tuple[Task, str]]) -> None:
        """What a dead worker of ``slot_id`` leaves: its task fails as lost, its chunk runs again."""
        killed = slot_id in self._killed
        self._killed.discard(slot_id)
        chunk_id, position, dead_pid = lost
        chunk = self._chunks.pop(chunk_id, None) if chunk_id else None
        if chunk is None:
            return  # the worker died idle, or after its chunk's results were sent
        again: list[int] = []
        for index, tid in enumerate(chunk.tids, 1):
            if tid not in chunk.pending:
                continue
            self._chunk_of.pop(tid, None)
            if index == position and not killed:
                task = self._forget(tid)
                if task is not None:
                    where = f"Dragon pool worker process {dead_pid} on {host}"
                    task["exception"] = WorkerLostError(task["uid"], where)
                    updates.append((task, _FAILED))
            elif tid in self._tasks:
                # Not started, or its result died with the worker: it runs again, first.
                again.append(tid)
        self._backlog.extendleft(reversed(again))
