"""``rhapsody run <workload.py> --backend dask`` with the task functions defined in the workload.

The workload file is imported under a made-up module name that no worker can import: its
functions and classes must reach the workers by value. This used to kill the workers and hang.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

WORKLOAD = '''
import dataclasses
import json
import os

from rhapsody import ComputeTask


@dataclasses.dataclass
class Point:
    x: int
    y: int


def norm2(point):
    return point.x * point.x + point.y * point.y


async def main(session):
    tasks = [ComputeTask(function=norm2, args=(Point(i, 1),)) for i in range(40)]
    await session.submit_tasks(tasks)
    await session.wait_tasks(tasks)
    with open(os.environ["RHAPSODY_TEST_RESULTS"], "w") as out:
        json.dump([[t.state, t.return_value, repr(t.exception)] for t in tasks], out)
'''


def test_rhapsody_run_with_functions_defined_in_the_workload(tmp_path: pathlib.Path) -> None:
    workload = tmp_path / "my_workload.py"
    workload.write_text(WORKLOAD)
    results = tmp_path / "results.json"
    rhapsody = pathlib.Path(sys.executable).parent / "rhapsody"
    done = subprocess.run(
        [str(rhapsody), "run", str(workload), "--backend", "dask", "-o", "n_workers=2", "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "RHAPSODY_LOAD_PLUGINS": "dask", "RHAPSODY_TEST_RESULTS": str(results)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = json.loads(results.read_text())
    assert outcome == [["DONE", i * i + 1, "None"] for i in range(40)]
