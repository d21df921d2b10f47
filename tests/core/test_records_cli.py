"""`rhapsody run --report/--events/--journal` as a user runs it (a real subprocess), the names
YAML entries get, and a clear error for an output in a folder that does not exist. (The Dask dashboard
link: tests/dask/test_records_cli.py.)"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys


def rhapsody_run(tmp_path: pathlib.Path, *arguments: str, plugins: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rhapsody", "run", *arguments, "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "RHAPSODY_LOAD_PLUGINS": plugins, "COLUMNS": "200"})


def test_report_and_events_from_a_yaml_run(tmp_path: pathlib.Path) -> None:
    (tmp_path / "tasks.yaml").write_text(
        "- echo one\n"
        "- executable: /bin/sh\n  arguments: ['-c', 'echo the disk is full >&2; exit 4']\n"
        "- executable: /bin/true\n  name: the true one\n")
    result = rhapsody_run(tmp_path, "tasks.yaml", "--report", "run.html", "--events", "run.jsonl")
    assert result.returncode == 1, result.stdout + result.stderr  # one task failed
    events = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    final = {event["name"]: event for event in events if event["state"] != "SUBMITTED"}
    assert set(final) == {"#1 echo one", "#2 /bin/sh -c echo the disk is full >&2; exit 4",
                          "the true one"}
    failed = final["#2 /bin/sh -c echo the disk is full >&2; exit 4"]
    assert (failed["state"], failed["exit_code"], failed["error"]) == ("FAILED", 4, "the disk is full")
    page = (tmp_path / "run.html").read_text()
    assert "the disk is full" in page and "the true one (task." in page
    assert "#2 /bin/sh -c echo the disk is full &gt;&amp;2; exit 4 (task." in page
    # The summary names tasks too.
    assert "#2 /bin/sh -c echo the disk is full >&2; exit 4 (task." in result.stdout


def test_an_output_in_a_missing_folder_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "tasks.yaml").write_text("- /bin/true\n")
    result = rhapsody_run(tmp_path, "tasks.yaml", "--journal", "nowhere/run.journal")
    assert result.returncode == 2
    assert "nowhere/run.journal: its folder nowhere does not exist" in result.stderr
    assert not (tmp_path / "nowhere").exists()
