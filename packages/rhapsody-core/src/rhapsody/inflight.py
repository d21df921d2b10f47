"""``InFlight``: the table of tasks a backend has handed to its engine and not yet reported ended.

Every backend needs the same bookkeeping: find a task from the engine's key when the engine calls
back (often from its own thread), find the engine's key from a task to cancel it, remember that a
cancel was asked for so the end is reported ``CANCELED``, and, when the engine itself fails, fail
everything still in it. :class:`rhapsody.BaseBackend` gives each backend one table,
``self.in_flight``, and :meth:`rhapsody.BaseBackend.fail_in_flight` on top of it.

The rule that keeps a task from being reported twice: whoever *pops* an entry reports its end.
An engine callback, a cancel, a timeout and a fail-all may race; each pops, and only the one that
got the entry goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from .task import Task


class Entry:
    """One task in flight: the task, the engine's key for it, and what the backend keeps with it.

    Attributes:
        task: the task.
        key: the engine's name for this run of the task (an RP uid, a Dask key, a pool chunk);
            the task's uid when the engine has none of its own.
        handle: what the backend needs to reach the run (an engine future, an asyncio task).
        cancelling: set by :meth:`InFlight.cancel`: the run's end is to be reported ``CANCELED``.
        timer: an ``asyncio.TimerHandle`` (e.g. a timeout) cancelled when the entry is popped.
    """

    __slots__ = ("cancelling", "handle", "key", "task", "timer")

    def __init__(self, task: Task, key: Hashable, handle: Any) -> None:
        self.task = task
        self.key: Any = key  # the backend's own key type (str, int, tuple)
        self.handle = handle
        self.cancelling = False
        self.timer: Any = None

    def __repr__(self) -> str:
        return f"<Entry {self.task['uid']} key={self.key!r}{' cancelling' if self.cancelling else ''}>"


class InFlight:
    """Tasks in flight, by engine key and by task uid. Every method is safe from any thread.

    ``len(table)``, ``key in table`` and iteration (over a snapshot of the entries) work as on a
    mapping of engine keys.
    """

    def __init__(self) -> None:
        self._by_key: dict[Hashable, Entry] = {}
        self._key_of: dict[str, Hashable] = {}
        # Held by each method; a backend may hold it too, to make several steps one.
        self.lock = threading.RLock()

    def add(self, task: Task, key: Hashable | None = None, handle: Any = None) -> Entry:
        """Record that ``task`` was handed over, under ``key`` (default: its uid).

        Add before the engine can call back about it: the first callback may come at once.

        Raises:
            ValueError: the task, or the key, is already in flight here.
        """
        uid = task["uid"]
        entry = Entry(task, uid if key is None else key, handle)
        with self.lock:
            if uid in self._key_of or entry.key in self._by_key:
                raise ValueError(f"task {uid} is already in flight on this backend")
            self._by_key[entry.key] = entry
            self._key_of[uid] = entry.key
        return entry

    def get(self, key: Hashable) -> Entry | None:
        """The entry under the engine's ``key``, or ``None`` once it has been popped."""
        return self._by_key.get(key)

    def find(self, task: Task) -> Entry | None:
        """The entry of ``task`` (by its uid), or ``None`` when it is not in flight here."""
        with self.lock:
            key = self._key_of.get(task["uid"])
            return None if key is None else self._by_key.get(key)

    def rekey(self, entry: Entry, key: Hashable) -> None:
        """File ``entry`` under a new engine key (the engine runs the task again under it).

        Raises:
            KeyError: the entry is no longer in flight (someone popped it).
        """
        with self.lock:
            if self._by_key.get(entry.key) is not entry:
                raise KeyError(entry.key)
            del self._by_key[entry.key]
            entry.key = key
            self._by_key[key] = entry
            self._key_of[entry.task["uid"]] = key

    def pop(self, key: Hashable) -> Entry | None:
        """Take the entry under ``key`` out; ``None`` when another caller took it first.

        The caller that gets the entry reports the task's end. Its timer, if any, is cancelled.
        """
        with self.lock:
            entry = self._by_key.pop(key, None)
            if entry is None:
                return None
            del self._key_of[entry.task["uid"]]
        _stop_timer(entry)
        return entry

    def pop_task(self, task: Task) -> Entry | None:
        """:meth:`pop` by task rather than by engine key."""
        with self.lock:
            key = self._key_of.get(task["uid"])
            return None if key is None else self.pop(key)

    def pop_all(self, where: Callable[[Entry], bool] | None = None) -> list[Entry]:
        """Take out every entry (or those ``where`` accepts), for the caller to end them."""
        with self.lock:
            if where is None:
                taken = list(self._by_key.values())
                self._by_key.clear()
                self._key_of.clear()
            else:
                taken = [entry for entry in self._by_key.values() if where(entry)]
                for entry in taken:
                    del self._by_key[entry.key]
                    del self._key_of[entry.task["uid"]]
        for entry in taken:
            _stop_timer(entry)
        return taken

    def cancel(self, task: Task) -> Entry | None:
        """Mark ``task``'s run as being cancelled and return its entry (still in flight).

        ``None`` when the task is not in flight here (it has ended, or never came).
        """
        with self.lock:
            entry = self.find(task)
            if entry is not None:
                entry.cancelling = True
            return entry

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[Entry]:
        with self.lock:
            return iter(list(self._by_key.values()))

    def __repr__(self) -> str:
        return f"<InFlight {len(self)} tasks>"


def _stop_timer(entry: Entry) -> None:
    timer = entry.timer
    if timer is not None:
        entry.timer = None
        timer.cancel()
