"""`rhapsody run --report/--events/--journal` as a user runs it (a real subprocess), the names
YAML entries get, and a clear error for an output in a folder that does not exist. (The Dask dashboard
link: tests/dask/test_records_cli.py.)"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
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


def test_the_cli_pages_run_records_commands_work_as_written(tmp_path: pathlib.Path) -> None:
    page = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    block = page.split("### Run records and resume", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].split() for line in block.splitlines() if line.strip()]
    assert [command[:2] for command in commands] == [["rhapsody", "run"]] * 2
    (tmp_path / "examples").mkdir()
    shutil.copy(pathlib.Path(__file__).resolve().parents[2] / "examples" / "montecarlo_pi.py",
                tmp_path / "examples")
    for command in (*commands, commands[1]):  # the journal line twice: the second run restores
        # As written: no --no-progress (the bar is off anyway when output is not a terminal).
        result = subprocess.run([sys.executable, "-m", "rhapsody", *command[1:]], capture_output=True,
                                text=True, timeout=300, cwd=tmp_path,
                                env={**os.environ, "RHAPSODY_LOAD_PLUGINS": "", "COLUMNS": "200"})
        assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "run.html").read_text().lstrip().lower().startswith("<!doctype html")
    events = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert {event["state"] for event in events} == {"SUBMITTED", "DONE"}
    assert "restored" in result.stdout  # the summary counts what the journal restored
