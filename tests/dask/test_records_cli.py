"""`rhapsody run -b dask` prints the dashboard link of the cluster the backend starts, when that
cluster serves a dashboard, and says nothing of one otherwise (a real subprocess, a real
LocalCluster)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys


def rhapsody_run(tmp_path: pathlib.Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rhapsody", "run", *arguments, "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "RHAPSODY_LOAD_PLUGINS": "dask", "COLUMNS": "200"})


def test_the_dask_dashboard_link_is_printed(tmp_path: pathlib.Path) -> None:
    (tmp_path / "tasks.yaml").write_text("- /bin/true\n")
    options = json.dumps({"dashboard_address": "127.0.0.1:0"})
    result = rhapsody_run(tmp_path, "tasks.yaml", "-b", "dask", "-o", "n_workers=1",
                          "-o", f"cluster_options={options}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rhapsody: dask dashboard: http://127.0.0.1:" in result.stderr, result.stderr
    plain = rhapsody_run(tmp_path, "tasks.yaml", "-b", "dask", "-o", "n_workers=1")
    assert plain.returncode == 0 and "dashboard" not in plain.stderr
