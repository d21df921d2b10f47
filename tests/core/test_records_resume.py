"""Resume after a real SIGKILL of a real `rhapsody run --journal`: every task runs, and the only
tasks that run twice are those that were in flight when the process was killed.

Each task appends its number to runs.txt when it starts, so the file counts executions. The run
is killed twice (once it has journaled a few tasks, then again after more), and a third run
finishes the workload."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import psutil

TASKS = 40
LIMIT = 4  # max_subprocesses: at most this many tasks in flight when the run is killed


def journaled(journal: pathlib.Path) -> set[int]:
    """The task numbers the journal holds complete lines for (a torn last line is skipped)."""
    found = set()
    if not journal.exists():
        return found
    for raw in journal.read_bytes().split(b"\n"):
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        found.add(int(record["name"].split()[0].lstrip("#")) - 1)
    return found


def executions(runs: pathlib.Path) -> list[int]:
    return [int(line) for line in runs.read_text().split()] if runs.exists() else []


def start(tmp_path: pathlib.Path, workload: pathlib.Path, journal: pathlib.Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "rhapsody", "run", str(workload), "--journal", str(journal),
               "--no-progress", "-o", f"max_subprocesses={LIMIT}"]
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "RHAPSODY_LOAD_PLUGINS": ""})


def kill_when(process: subprocess.Popen[str], journal: pathlib.Path, at_least: int) -> None:
    deadline = time.monotonic() + 120
    while len(journaled(journal)) < at_least:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run journaled too few tasks in 120 s"
        time.sleep(0.02)
    # The programs it started run in sessions of their own and outlive it: wait for them too, so
    # that they are not counted as the next run's. Stopped first, the run starts no program
    # between the look at its children and the kill (one started then was counted as the next
    # run's, and the test failed now and then).
    process.send_signal(signal.SIGSTOP)
    programs = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    psutil.wait_procs(programs, timeout=60)
    assert not any(program.is_running() for program in programs)


def test_resume_after_sigkill_reruns_only_tasks_in_flight(tmp_path: pathlib.Path) -> None:
    runs, journal, workload = tmp_path / "runs.txt", tmp_path / "run.journal", tmp_path / "w.yaml"
    workload.write_text("".join(f"- echo {i} >> {runs}; sleep 0.3\n" for i in range(TASKS)))

    recorded: list[set[int]] = []
    ran: list[list[int]] = []
    for at_least in (5, 16):
        kill_when(start(tmp_path, workload, journal), journal, at_least)
        recorded.append(journaled(journal))
        ran.append(executions(runs))
    final = start(tmp_path, workload, journal)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, out + err
    total = executions(runs)

    assert sorted(set(total)) == list(range(TASKS))  # every task ran
    assert journaled(journal) == set(range(TASKS))
    # A task journaled before a kill never ran again after it.
    for done, before in zip(recorded, ran):
        assert not done & set(total[len(before):]), (done, total[len(before):])
    assert all(total.count(task) == 1 for task in recorded[0])
    # What ran twice is exactly what a killed run had started and not journaled, at most LIMIT
    # tasks per kill.
    in_flight = [set(ran[0]) - recorded[0], set(ran[1][len(ran[0]):]) - recorded[1]]
    assert all(len(lost) <= LIMIT for lost in in_flight), in_flight
    again = sorted(task for task in set(total) if total.count(task) > 1)
    assert len(total) - TASKS == sum(len(lost) for lost in in_flight)
    assert set(again) <= in_flight[0] | in_flight[1]
    # The summary of the last run counts what the journal gave back.
    restored = len(recorded[1])
    assert f"│ {restored:>8} │" in out, out
