"""The documented example runs as written (a real LocalCluster, started and closed by rhapsody)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "dask_quickstart.py"


def test_quickstart_example_runs() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.strip().splitlines())
    assert lines["squares"].strip() == str([i * i for i in range(10)])
    assert lines["async"].strip() == "hello dask"
    assert lines["executable"].strip() == "hi from /tmp exit code 0"
    assert lines["gpu task"].strip().startswith("worker")
    assert "FAILED" in lines["tpu task"] and "supply resource TPU" in lines["tpu task"]
    assert lines["failing task"].strip() == "FAILED - ValueError('bad input')"
