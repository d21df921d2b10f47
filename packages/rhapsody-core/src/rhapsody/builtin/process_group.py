"""An executable task's program as a process group: start it, read its output, end the group.

Each program starts in a session of its own (``start_new_session``), so its process group holds
everything it starts; ending the task kills that whole group, including what the program left
running in the background after it exited.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal

from ..task import Task

# How long a cancelled or timed-out program gets between SIGTERM and SIGKILL.
KILL_GRACE = 3.0

# After an executable's program has exited and its group has been killed, how long its output is
# still read. The killed group lets go of the pipes at once; only a process that left the group
# (its own setsid) can keep them open, and reading must not wait for it.
_DRAIN = 1.0


class Output(asyncio.SubprocessProtocol):
    """An executable's stdout and stderr as they arrive, and when its program and its pipes end.

    ``Process.wait()`` cannot tell when the program exits: from Python 3.11 on it also waits for
    EOF on the pipes, which a child left in the background holds off for as long as it lives.
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.exited: asyncio.Future[None] = loop.create_future()  # the program (group leader)
        self.closed: asyncio.Future[None] = loop.create_future()  # it exited and both pipes closed
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        (self.stdout if fd == 1 else self.stderr).extend(data)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self._transport is not None:
            # Everything has ended, so this only marks the transport closed (no ResourceWarning).
            self._transport.close()


async def spawn(task: Task, output: Output, launcher: list[str],
                 env: dict[str, str] | None) -> asyncio.SubprocessTransport:
    """Start the task's program (under ``launcher``, e.g. ``mpiexec -n 4``, when not empty)."""
    options = task["task_backend_specific_kwargs"]
    loop = asyncio.get_running_loop()
    # capture_stdio=False: None, so the program writes to our own stdout and stderr.
    pipe = asyncio.subprocess.PIPE if task["capture_stdio"] else None
    argv = [task["executable"], *task["arguments"]]
    # stdin=None: the program inherits ours, as before (the loop's own default would be a pipe).
    if options.get("shell"):
        command = " ".join([task["executable"], *map(shlex.quote, task["arguments"])])
        if not launcher:
            transport, _ = await loop.subprocess_shell(
                lambda: output, command, stdin=None, stdout=pipe, stderr=pipe,
                cwd=options.get("cwd"), env=env, start_new_session=True,
            )
            return transport
        argv = ["/bin/sh", "-c", command]  # each rank runs the shell command
    transport, _ = await loop.subprocess_exec(
        lambda: output, *launcher, *argv, stdin=None, stdout=pipe,
        stderr=pipe, cwd=options.get("cwd"), env=env, start_new_session=True,
    )
    return transport


async def end_group(transport: asyncio.SubprocessTransport, output: Output) -> None:
    """Kill the task's whole process group, then read what is left of its output, at most _DRAIN s.

    The group (pgid == the program's pid, from start_new_session) lives as long as any member
    does, so killpg still reaches what the program left running after it has exited.
    """
    pgid = transport.get_pid()
    try:
        if not output.exited.done():
            # Timed out or cancelled: the program gets a chance to stop cleanly.
            signal_group(pgid, signal.SIGTERM)
            await asyncio.wait((output.exited,), timeout=KILL_GRACE)
        # What the program left behind gets no grace: the task it belongs to has ended.
        signal_group(pgid, signal.SIGKILL)
        await asyncio.wait((output.closed,), timeout=_DRAIN)
    except asyncio.CancelledError:
        signal_group(pgid, signal.SIGKILL)  # the event loop is going away: kill without waiting
        raise
    finally:
        stop_reading(transport)


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty, or all that is left of it runs as another user


def stop_reading(transport: asyncio.SubprocessTransport) -> None:
    # Ends the reading even while a process outside the group holds the other ends (its writes
    # then fail with EPIPE); a no-op for pipes that already reached EOF.
    for fd in (1, 2):
        pipe = transport.get_pipe_transport(fd)
        if pipe is not None:
            pipe.close()
