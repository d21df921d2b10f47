"""examples/portable_resources.py on Dask: the workload the concurrent test runs, unchanged, on a
real LocalCluster of two workers (each CPU=4, GPU=1, MEMORY=4096), started by the example itself.

What each program printed says when it ran: never more GPU tasks at once than the two workers'
GPUs, and never more one-core tasks alongside a whole-worker task than the other worker's cores.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import runpy
import subprocess
import sys
from types import SimpleNamespace

from rhapsody import Session

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "portable_resources.py"


def test_the_example_runs_as_written_on_dask() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE), "--backend", "dask"], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "RHAPSODY_LOAD_PLUGINS": "dask"},
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("14 tasks on dask in "), result.stdout
    assert result.stdout.count("CUDA_VISIBLE_DEVICES=") == 14, result.stdout


def test_on_dask_the_same_tasks_are_placed_by_what_they_ask_for() -> None:
    example = SimpleNamespace(**runpy.run_path(str(EXAMPLE)))

    async def main() -> list:  # type: ignore[type-arg]
        async with Session(backends=[example.backend("dask")]) as session:
            return await asyncio.wait_for(example.run(session), 240)  # type: ignore[no-any-return]

    tasks = asyncio.run(main())
    assert [task.state for task in tasks] == ["DONE"] * len(tasks), [t.exception for t in tasks]
    seen = {task.name: example.interval(task)[:2] for task in tasks}
    # Two workers, one GPU each.
    assert example.most_at_once([span for name, span in seen.items() if name.startswith("gpu-")]) <= 2
    for name, (start, end) in seen.items():
        if name.startswith("node-"):  # its worker's four cores are its own; the other has four
            others = [(max(s, start), min(e, end)) for other, (s, e) in seen.items()
                      if other != name and s < end and start < e]
            assert not others or example.most_at_once(others) <= example.CORES, (name, others)

