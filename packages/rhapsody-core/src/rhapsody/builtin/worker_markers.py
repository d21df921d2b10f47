"""Which task each process-pool worker is running, readable after the worker has died.

A ``concurrent.futures.ProcessPoolExecutor`` whose worker dies fails every future it holds with
``BrokenProcessPool`` and says neither which worker died nor what it was running. So each worker
keeps a 16-byte marker in a memory-mapped file of its own (named by its pid, in a directory the
backend owns): the id of the chunk it runs and the index of the task it has started. Writing it
costs one ``pack_into`` per task. When the pool breaks, :meth:`WorkerMarkers.read` tells the backend
which chunks had started, in which process and how far, and :func:`exit_status` whether that
process is dead (and how it ended): the one task that was running in a dead worker is the only one
lost with it; every other task of the broken pool can simply run again.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import tempfile
import weakref

_MARKER = struct.Struct("qq")  # chunk id, index of the task started (len(chunk): all ended)
_INDEX = struct.Struct("q")

# In a pool worker: marker directory -> this process's mapped marker.
_mapped: dict[str, tuple[int, mmap.mmap]] = {}


def worker_marker(directory: str) -> mmap.mmap:
    """The calling worker's marker in ``directory``, created on its first chunk (in the worker)."""
    entry = _mapped.get(directory)
    pid = os.getpid()
    if entry is not None and entry[0] == pid:
        return entry[1]
    fd = os.open(os.path.join(directory, str(pid)), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, _MARKER.size)
        marker = mmap.mmap(fd, _MARKER.size)
    finally:
        os.close(fd)
    _mapped[directory] = (pid, marker)
    return marker


def mark_chunk(marker: mmap.mmap, chunk_id: int) -> None:
    """Record that this worker starts chunk ``chunk_id`` (its first task, index 0)."""
    _MARKER.pack_into(marker, 0, chunk_id, 0)


def mark_task(marker: mmap.mmap, index: int) -> None:
    """Record that this worker starts task ``index`` of its chunk (or, with len(chunk), ended it)."""
    _INDEX.pack_into(marker, 8, index)


class WorkerMarkers:
    """The directory of one backend's markers (in ``/dev/shm`` where it exists: no disk I/O)."""

    def __init__(self) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.directory = tempfile.mkdtemp(prefix="rhapsody-workers-", dir=base)
        # Also removed when a program exits without closing its backend (memory, not disk).
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.directory, True)

    def read(self) -> dict[int, tuple[int, int]]:
        """chunk id -> (pid, index of the task started) for every worker that has run a chunk."""
        found: dict[int, tuple[int, int]] = {}
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return found
        for name in names:
            try:
                with open(os.path.join(self.directory, name), "rb") as file:
                    data = file.read(_MARKER.size)
            except OSError:
                continue
            if len(data) == _MARKER.size:
                chunk_id, index = _MARKER.unpack(data)
                found[chunk_id] = (int(name), index)
        return found

    def close(self) -> None:
        self._cleanup()


def exit_status(pid: int) -> tuple[bool, int | None]:
    """``(dead, exit_code)`` of a child process that nobody has reaped yet, without reaping it.

    A pool worker that died stays a zombie until the pool joins it, and the pool fails its futures
    before it does; so this reads ``/proc`` (Linux) rather than waiting, which would steal the
    status from the pool. ``exit_code`` is negative for a signal, as :mod:`subprocess` reports it,
    and ``None`` where the system does not say.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read().decode(errors="replace")
    except FileNotFoundError:
        return True, None
    except OSError:
        return False, None
    fields = stat[stat.rfind(")") + 2:].split()
    if not fields or fields[0] not in ("Z", "X"):
        return False, None
    try:
        status = int(fields[49])  # field 52 of stat(5), "exit_code", counted after the comm field
    except (IndexError, ValueError):
        return True, None
    if os.WIFSIGNALED(status):
        return True, -os.WTERMSIG(status)
    return True, os.WEXITSTATUS(status)
