"""What a rhapsody-dragon client leaves on its node when it is killed, and who removes it.

A client makes two directories on its own node: the Batch's output directory (in the temporary
directory) and the pool's progress directory (in ``/dev/shm``). It removes both when it closes.
A client killed without closing (``SIGKILL``, or the launcher's teardown after Ctrl-C) cannot, so
each directory is named after the client's host and pid (:func:`prefix`), and the next client
started on the node removes those whose process is gone (:func:`remove_stale`).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from rhapsody.builtin.worker_markers import exit_status

_STEM = "rhapsody-dragon-"


def prefix() -> str:
    """The start of the name of a directory this process makes: ``rhapsody-dragon-HOST-PID-``."""
    return f"{_STEM}{socket.gethostname()}-{os.getpid()}-"


def remove_stale(base: Path) -> list[Path]:
    """Remove the directories in ``base`` that a client on this host left when it was killed:
    named by :func:`prefix`, owned by this user, their pid no longer running. Returns them.

    A directory of a live process, of another host (a shared file system) or of another user is
    left alone; so is anything that cannot be read or removed.
    """
    host = socket.gethostname()
    removed: list[Path] = []
    try:
        candidates = list(base.glob(f"{_STEM}*"))
    except OSError:
        return removed
    for path in candidates:
        owner, pid = _host_and_pid(path.name)
        if owner != host or pid is None or _alive(pid):
            continue
        try:
            if path.stat().st_uid != os.getuid() or not path.is_dir():
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _host_and_pid(name: str) -> tuple[str | None, int | None]:
    # rhapsody-dragon-HOST-PID-SUFFIX: a host name may hold "-", the pid and suffix do not.
    parts = name[len(_STEM):].rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None, None
    return parts[0], int(parts[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # e.g. another user's process: it exists
    # A killed client nobody has reaped yet (a zombie) is gone too.
    return not (Path(f"/proc/{pid}").is_dir() and exit_status(pid)[0])
