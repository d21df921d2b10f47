"""Ctrl-C and --timeout end `rhapsody run` promptly, with the summary and without a traceback,
even while executables and uninterruptible thread functions still run. Real processes, real
SIGINT; time is bounded only by the timeouts of the waits."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

# One executable that records its pid (so the test can check it was killed) and two sync
# functions that sleep in pool threads, which nothing can interrupt.
WORKLOAD = '''
import asyncio, os, pathlib, time
from rhapsody import ComputeTask

def nap(seconds):
    time.sleep(seconds)
    return seconds

async def main(session):
    pidfile = pathlib.Path(os.environ["PIDFILE"])
    tasks = [ComputeTask(executable="/bin/sh", arguments=["-c", f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 120"])]
    tasks += [ComputeTask(function=nap, args=(120,)) for _ in range(2)]
    await session.submit_tasks(tasks)
    for _ in range(600):  # bounded: the executable writes its pid within moments
        if pidfile.exists():
            break
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await session.wait_tasks(tasks)
'''

NO_TASKS_LEFT = "│    0 │      0 │        3 │"  # DONE, FAILED, CANCELED


@pytest.fixture
def workload(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "slow.py"
    path.write_text(WORKLOAD)
    return path


def start(workload: pathlib.Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, RHAPSODY_LOAD_PLUGINS="", COLUMNS="200",
               PIDFILE=str(workload.parent / "executable.pid"))
    return subprocess.Popen([sys.executable, "-m", "rhapsody", "run", str(workload), "--no-progress", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_ready(proc: subprocess.Popen[str], workload: pathlib.Path) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", line + (proc.stderr.read() if proc.stderr else "")
    return int((workload.parent / "executable.pid").read_text())


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_ctrl_c_cancels_everything_prints_the_summary_and_exits_130(workload: pathlib.Path) -> None:
    proc = start(workload)
    pid = wait_ready(proc, workload)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=45)
    assert proc.returncode == 130, out + err
    assert "rhapsody run summary" in out
    assert NO_TASKS_LEFT in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "cancelling running tasks (Ctrl-C again to exit now)" in err
    # The thread functions sleep for 2 minutes: the command says so and does not wait for them.
    assert "waiting up to 5 s for 2 running thread task(s)" in err
    assert "exiting without them" in err
    assert_gone(pid)


def test_second_ctrl_c_exits_at_once(workload: pathlib.Path) -> None:
    proc = start(workload)
    wait_ready(proc, workload)
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    assert "cancelling running tasks" in proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=45)
    assert proc.returncode == 130
    assert "interrupted again; exiting now" in err
    assert "Traceback" not in err


def test_timeout_ends_the_process_near_the_limit_with_the_summary(workload: pathlib.Path) -> None:
    proc = start(workload, "--timeout", "2")
    pid = wait_ready(proc, workload)
    # Well under the 2 minutes the thread functions sleep; the bounded wait lets it end in ~10 s.
    out, err = proc.communicate(timeout=45)
    assert proc.returncode == 1, out + err
    assert "did not finish within 2 s; 3 tasks were still running" in err
    assert "did not finish" not in out
    assert "rhapsody run summary" in out and NO_TASKS_LEFT in out
    assert "waiting up to 5 s for 2 running thread task(s)" in err
    assert "Traceback" not in err
    assert_gone(pid)


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "-inf", "soon"])
def test_timeout_must_be_positive_and_finite(workload: pathlib.Path, value: str) -> None:
    result = subprocess.run([sys.executable, "-m", "rhapsody", "run", str(workload), f"--timeout={value}"],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, RHAPSODY_LOAD_PLUGINS=""))
    assert result.returncode == 2
    assert f"argument --timeout: expected a positive, finite number of seconds, got {value!r}" in result.stderr
    assert result.stdout == ""


def test_a_timeout_error_of_the_workload_is_not_the_run_timeout(tmp_path: pathlib.Path) -> None:
    workload = tmp_path / "own_timeout.py"
    workload.write_text("import asyncio\n\nasync def main(session):\n"
                        "    await asyncio.wait_for(asyncio.sleep(30), 0.01)\n")
    result = subprocess.run([sys.executable, "-m", "rhapsody", "run", str(workload), "--timeout", "60"],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, RHAPSODY_LOAD_PLUGINS=""))
    assert result.returncode == 2
    assert "rhapsody: the workload raised:" in result.stderr
    assert "TimeoutError" in result.stderr
    assert "did not finish within" not in result.stderr
