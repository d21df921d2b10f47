"""YAML/JSON task lists take resources: as ComputeTask does (run through the real command line)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from rhapsody.cli.workload import WorkloadError, load_workload

TASKS = """
tasks:
  - executable: /bin/sh
    arguments: ["-c", "echo $CUDA_VISIBLE_DEVICES > {out}/gpu-a"]
    resources: {{gpus_per_rank: 1}}
  - executable: /bin/sh
    arguments: ["-c", "echo $CUDA_VISIBLE_DEVICES > {out}/gpu-b"]
    resources:
      gpus_per_rank: 1
      cores_per_rank: 1
  - executable: /bin/sh
    arguments: ["-c", "echo \\"[$CUDA_VISIBLE_DEVICES]\\" > {out}/cpu"]
    resources: {{cores_per_rank: 2, memory_per_rank: 64}}
"""


def rhapsody(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RHAPSODY_LOAD_PLUGINS": ""}
    return subprocess.run([sys.executable, "-m", "rhapsody", *args], capture_output=True, text=True,
                          timeout=120, env=env, check=False)


def test_a_yaml_task_list_asks_for_resources(tmp_path: pathlib.Path) -> None:
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(TASKS.format(out=tmp_path))
    result = rhapsody("run", str(tasks), "--no-progress", "-o", "cores=2", "-o", 'gpus=["y0", "y1"]')
    assert result.returncode == 0, result.stderr
    seen = {(tmp_path / "gpu-a").read_text().strip(), (tmp_path / "gpu-b").read_text().strip()}
    assert seen == {"y0", "y1"}
    assert (tmp_path / "cpu").read_text().strip() == "[]"


def test_a_json_task_list_asking_more_than_the_node_fails_naming_the_resource(tmp_path: pathlib.Path) -> None:
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"executable": "/bin/true", "resources": {"gpus_per_rank": 4}}]))
    result = rhapsody("run", str(tasks), "--no-progress", "-o", "gpus=2")
    assert result.returncode != 0
    assert "asks for 4 GPUs" in result.stderr and "offers 2 (0, 1)" in result.stderr, result.stderr


@pytest.mark.parametrize(("resources", "message"), [
    ("{gpu: 1}", "task #1: ComputeTask: task t1: unknown resources key 'gpu' "
                 "(did you mean 'gpus_per_rank'?)"),
    ("{ranks: two}", "task #1: ComputeTask: task t1: resources['ranks'] must be an integer"),
    ("[1, 2]", "task #1: ComputeTask: task t1: resources must be a dict"),
])
def test_a_bad_request_names_the_file_the_task_and_the_key(tmp_path: pathlib.Path, resources: str,
                                                           message: str) -> None:
    tasks = tmp_path / "bad.yaml"
    tasks.write_text(f"- executable: /bin/true\n  uid: t1\n  resources: {resources}\n")
    with pytest.raises(WorkloadError) as info:
        load_workload(tasks)
    assert str(info.value).startswith(f"{tasks}: {message}"), str(info.value)
