"""How ``rhapsody run`` ends early (Ctrl-C, ``--timeout``) without hanging on what it cannot stop.

A function running in a thread cannot be interrupted, and the interpreter joins every non-daemon
thread at exit. So after the run the command waits a bounded time for such threads, says what it
waits for, and otherwise leaves with ``os._exit``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import Any, NoReturn

INTERRUPTED = 130  # the shell's convention for a process ended by SIGINT
THREAD_GRACE = 5.0  # seconds to wait for busy threads once the run has ended
# Idle pool workers leave within moments of their pool's shutdown; only threads still there after
# this are reported as busy.
_SETTLE = 0.5


def say(message: str) -> None:
    """Write one line to stderr; safe inside a signal handler, where ``print`` may re-enter the
    buffered writer the main thread is in the middle of."""
    try:
        os.write(sys.stderr.fileno(), f"{message}\n".encode())
    except (OSError, ValueError):
        pass


def hard_exit(status: int, message: str | None = None) -> NoReturn:
    """Leave now, without the interpreter's joins of busy threads."""
    if message:
        say(message)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or re-entered stream must not stop the exit
            pass
    os._exit(status)


class RunStopper:
    """Owns SIGINT while ``rhapsody run`` runs.

    The first Ctrl-C cancels the run's main task, so the session closes and its backends cancel
    every task (the summary then counts them CANCELED). A Ctrl-C once the run is already stopping
    (a second one, or one during a timeout's clean-up) ends the process at once.
    """

    def __init__(self) -> None:
        self.interrupted = False
        self.stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._previous: Any = None

    def __enter__(self) -> RunStopper:
        # Only the main thread may set signal handlers (main() called from another thread keeps
        # the default: Ctrl-C is then the caller's business).
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def watch(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` on the first Ctrl-C from now on."""
        self._loop, self._task = loop, task

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            hard_exit(INTERRUPTED, "rhapsody: interrupted again; exiting now")
        self.stopping = self.interrupted = True
        if self._task is None or self._loop is None:
            # Nothing runs yet (the workload is being loaded): abort that.
            raise KeyboardInterrupt
        if self._loop.is_closed():
            hard_exit(INTERRUPTED, "rhapsody: interrupted")  # the run is over; nothing to cancel
        say("rhapsody: interrupted; cancelling running tasks (Ctrl-C again to exit now)")
        # The handler runs between two bytecodes of the loop's own code; let the loop do it.
        self._loop.call_soon_threadsafe(self._task.cancel)

    def wait_for_threads(self, status: int, grace: float = THREAD_GRACE) -> None:
        """Wait up to ``grace`` s for non-daemon threads; if some still run, ``hard_exit(status)``."""
        self.stopping = True
        threads = [t for t in threading.enumerate()
                   if t is not threading.main_thread() and not t.daemon and t.is_alive()]
        start = time.monotonic()
        busy = _join(threads, start + _SETTLE)
        if not busy:
            return
        again = "again " if self.interrupted else ""
        say(f"rhapsody: waiting up to {grace:g} s for {len(busy)} running thread task(s) (a "
            f"function running in a thread cannot be interrupted); Ctrl-C {again}to exit now")
        busy = _join(busy, start + grace)
        if busy:
            hard_exit(status, f"rhapsody: {len(busy)} thread task(s) still running after {grace:g} s; "
                              "exiting without them")


def _join(threads: list[threading.Thread], deadline: float) -> list[threading.Thread]:
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in threads if t.is_alive()]
