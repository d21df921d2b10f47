"""Run one command under the ``dragon`` launcher and always clean up after it.

``python tests/dragon/dragon_run.py TIMEOUT_S PROGRAM [ARGS...]``: starts ``dragon PROGRAM ARGS``
(the ``dragon`` next to this Python, else on PATH) in a process group of its own, waits at most TIMEOUT_S, then
kills whatever is left of that group and removes the shared-memory pools the run created in
/dev/shm (and the ``ddict_orc_*`` files DDicts leave in the working directory). A Dragon program that dies or hangs otherwise leaves processes and gigabytes of pools
behind. (``dragon-cleanup`` is not used: it removes every /dev/shm file of the user.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SHM = Path("/dev/shm")


def dragon_pools() -> set[str]:
    # Dragon names its pools D<...>M (manifest) and D<...>D (data).
    if not SHM.is_dir():
        return set()
    return {p.name for p in SHM.iterdir() if p.name.startswith("D") and p.name[-1:] in ("M", "D")}


def launcher() -> str | None:
    """The ``dragon`` launcher next to this Python, else the one on PATH."""
    sibling = Path(sys.executable).with_name("dragon")
    return str(sibling) if sibling.exists() else shutil.which("dragon")


def clean_up(launcher_pid: int, pools_before: set[str], orchestrator_files: set[Path]) -> None:
    """Kill what is left of the runtime started by the launcher ``launcher_pid`` (its process
    group) and remove the shared-memory pools and DDict files it created."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(launcher_pid, signum)
        except ProcessLookupError:
            break
        time.sleep(2)
    # Only this runtime's pools: Dragon puts the launcher pid's last three digits in their
    # names, and another runtime may be running on the machine.
    tag = f"{launcher_pid % 1000:03d}"
    for name in dragon_pools() - pools_before:
        if tag in name:
            (SHM / name).unlink(missing_ok=True)
    # DDict orchestrators leave a file in the working directory.
    for path in set(Path.cwd().glob("ddict_orc_*")) - orchestrator_files:
        path.unlink(missing_ok=True)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    timeout = float(argv[0])
    program = launcher()
    if program is None:
        print("dragon_run: no `dragon` launcher next to this Python or on PATH", file=sys.stderr)
        return 2
    # Stopped by `timeout` or a CI runner, the wrapper still cleans up (below).
    signal.signal(signal.SIGTERM, _interrupt)
    before = dragon_pools()
    orchestrator_files = set(Path.cwd().glob("ddict_orc_*"))
    # A new process group, not a new session: the launcher hangs without its session.
    process = subprocess.Popen([program, *argv[1:]], preexec_fn=os.setpgrp)  # noqa: PLW1509
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"dragon_run: {argv[1:]} ran over {timeout} s; killing it", file=sys.stderr, flush=True)
        code = 124
    except KeyboardInterrupt:
        code = 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut the clean-up short
        clean_up(process.pid, before, orchestrator_files)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
