"""The process Dragon starts for a single-process executable task.

``python -I .../rhapsody_dragon/runner.py PID_FILE TIMEOUT -- PROGRAM [ARGS...]`` runs the program in a
process group of its own and writes that group's id to ``PID_FILE``, so that cancelling or closing
can kill everything the program started (Dragon 0.15 signals only the process it launched, and its
cancel of a running process whose children keep running never completes). ``TIMEOUT`` is seconds,
or ``-`` for none: on expiry the group is killed, ``PID_FILE.timeout`` is written and the exit
status is 124.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

TIMED_OUT = 124
CANNOT_RUN = 127


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: runner.py PID_FILE TIMEOUT -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    pid_file, timeout_text, _, *command = argv
    timeout = None if timeout_text == "-" else float(timeout_text)
    try:
        child = subprocess.Popen(command, start_new_session=True)
    except OSError as exc:
        print(f"rhapsody-dragon: cannot run {command[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return CANNOT_RUN
    Path(pid_file).write_text(str(child.pid))

    def stop(signum: int, _frame: object) -> None:
        _kill_group(child.pid)
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    try:
        code = child.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child.pid)
        child.wait()
        Path(pid_file + ".timeout").write_text(str(timeout))
        print(f"rhapsody-dragon: the task exceeded its timeout of {timeout} s", file=sys.stderr)
        return TIMED_OUT
    finally:
        # Whatever the program left running in its group ends with it.
        _kill_group(child.pid)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
