"""Workload files' functions travel by value: their module name is made up, so no other process
can import it (a Dask worker, a process pool on another interpreter)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import cloudpickle

from rhapsody.cli.workload import load_workload

WORKLOAD = '''
import subprocess
import sys

import cloudpickle

from rhapsody import ComputeTask

OFFSET = 100


def shifted(x):
    return x + OFFSET


# Loads a pickled function in an interpreter that never imported this file, as a remote worker does.
UNPICKLE = "import pickle, sys; f = pickle.loads(sys.stdin.buffer.read()); print(f(1))"


async def main(session):
    local = ComputeTask(function=shifted, args=(2,))
    await session.submit_tasks([local])
    await session.wait_tasks([local])
    remote = subprocess.run([sys.executable, "-c", UNPICKLE], input=cloudpickle.dumps(shifted),
                            capture_output=True, timeout=60)
    print("local:", local.return_value, "remote:", remote.stdout.decode().strip(), remote.stderr.decode())
'''

UNPICKLE = "import pickle, sys; f = pickle.loads(sys.stdin.buffer.read()); print(f(5))"


def _write(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "shipped.py"
    path.write_text(WORKLOAD)
    return path


def test_workload_function_unpickles_where_the_workload_was_never_imported(tmp_path: pathlib.Path) -> None:
    main = load_workload(_write(tmp_path))
    shifted = main.__globals__["shifted"]  # type: ignore[attr-defined]
    payload = cloudpickle.dumps(shifted)
    # cwd elsewhere and no PYTHONPATH: the file's directory is not importable from the child.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", UNPICKLE], input=payload, capture_output=True,
                            timeout=60, cwd="/", env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "105"


def test_rhapsody_run_ships_workload_functions_by_value(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(RHAPSODY_LOAD_PLUGINS="", COLUMNS="200")
    result = subprocess.run([sys.executable, "-m", "rhapsody", "run", str(_write(tmp_path)), "--no-progress"],
                            capture_output=True, text=True, timeout=120, cwd="/", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "local: 102 remote: 101" in result.stdout
