"""examples/portable_resources.py on the concurrent backend: the example runs as written, and its
tasks got what they asked for (read from what each program printed: when it ran, which GPUs)."""

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


def test_the_example_runs_as_written() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "RHAPSODY_LOAD_PLUGINS": ""}, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("14 tasks on concurrent in ")
    assert sum("CUDA_VISIBLE_DEVICES=fake-gpu-" in line for line in lines) == 4
    assert sum("CUDA_VISIBLE_DEVICES=(empty: no GPU)" in line for line in lines) == 10


def test_on_concurrent_every_task_got_what_it_asked_for() -> None:
    example = SimpleNamespace(**runpy.run_path(str(EXAMPLE)))

    async def main() -> list:  # type: ignore[type-arg]
        async with Session(backends=[example.backend("concurrent")]) as session:
            return await example.run(session)  # type: ignore[no-any-return]

    tasks = asyncio.run(main())
    assert [task.state for task in tasks] == ["DONE"] * len(tasks), [t.stderr for t in tasks]
    seen = {task.name: example.interval(task) for task in tasks}
    gpu = [name for name in seen if name.startswith("gpu-")]
    for name, (_, _, devices) in seen.items():
        if name in gpu:
            assert devices in example.GPU_IDS  # exactly one of the node's GPUs
        else:
            assert devices == ""  # asked for none: sees none
    assert example.most_at_once([(s, e) for s, e, _ in seen.values()]) <= example.CORES  # a core each
    for name in seen:
        start, end, devices = seen[name]
        alongside = [other for other, (s, e, _) in seen.items() if other != name and s < end and start < e]
        if name.startswith("node-"):
            assert alongside == [], f"{name} needs every core yet ran alongside {alongside}"
        if name in gpu:
            assert not [other for other in alongside if seen[other][2] == devices], (
                f"{name} shared {devices}")

