"""The command line, run as a user runs it: a real `python -m rhapsody` process."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def rhapsody(*args: str, cwd: pathlib.Path | None = None, timeout: float = 300,
             tmpdir: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RHAPSODY_LOAD_PLUGINS="", COLUMNS="200")
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run([sys.executable, "-m", "rhapsody", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


@pytest.mark.parametrize("options", [[], ["-o", "processes=2"]], ids=["threads", "processes"])
def test_example_python_workload_runs_summarises_and_cleans_up(tmp_path: pathlib.Path, options: list[str]) -> None:
    # A temp folder of its own: other runs on this machine cannot change the count.
    before = len(list(tmp_path.glob("rhapsody-pi-*")))
    result = rhapsody("run", str(EXAMPLES / "montecarlo_pi.py"), *options, tmpdir=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    estimate = float(result.stdout.split("function tasks: ")[1].split()[0])
    assert abs(estimate - 3.14159) < 0.01
    estimate = float(result.stdout.split("files they wrote): ")[1].split()[0])
    assert abs(estimate - 3.14159) < 0.05
    assert "rhapsody run summary" in result.stdout
    assert "│  240 │      0 │        0 │" in result.stdout  # tasks DONE, FAILED, CANCELED
    assert len(list(tmp_path.glob("rhapsody-pi-*"))) == before == 0


def test_processes_option_runs_functions_in_worker_processes(tmp_path: pathlib.Path) -> None:
    workload = tmp_path / "pids.py"
    workload.write_text(textwrap.dedent("""\
        import os
        from rhapsody import ComputeTask

        def where():
            return os.getpid()

        async def main(session):
            tasks = [ComputeTask(function=where) for _ in range(8)]
            await session.submit_tasks(tasks)
            await session.wait_tasks(tasks)
            pids = {t.return_value for t in tasks}
            print("in this process:", os.getpid() in pids, "workers:", len(pids))
    """))
    threads = rhapsody("run", str(workload))
    assert "in this process: True workers: 1" in threads.stdout, threads.stdout + threads.stderr
    processes = rhapsody("run", str(workload), "-o", "processes=2")
    assert processes.returncode == 0, processes.stdout + processes.stderr
    assert "in this process: False workers:" in processes.stdout


def test_example_task_list_runs() -> None:
    result = rhapsody("run", str(EXAMPLES / "shell_tasks.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "│    6 │      0 │        0 │" in result.stdout


def test_failures_make_exit_status_1_and_are_listed(tmp_path: pathlib.Path) -> None:
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([
        {"executable": "/bin/sh", "arguments": ["-c", "echo fine"]},
        {"executable": "/bin/sh", "arguments": ["-c", "echo disk quota exceeded >&2; exit 4"], "uid": "bad-one"},
    ]))
    result = rhapsody("run", str(tasks))
    assert result.returncode == 1
    assert "bad-one" in result.stdout
    assert "disk quota exceeded" in result.stdout
    assert "failures (1" in result.stdout


def test_python_workload_exception_is_shown_with_exit_2(tmp_path: pathlib.Path) -> None:
    workload = tmp_path / "broken.py"
    workload.write_text("async def main(session):\n    raise RuntimeError('workflow bug here')\n")
    result = rhapsody("run", str(workload))
    assert result.returncode == 2
    assert "workflow bug here" in result.stderr
    assert "Traceback" in result.stderr
    assert "workflow bug here" not in result.stdout
    assert "rhapsody run summary" in result.stdout


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nomain.py", "x = 1\n", "define `async def main(session)`"),
        ("syncmain.py", "def main(session):\n    pass\n", "define `async def main(session)`"),
        ("bad.yaml", "tasks:\n  - arguments: [1]\n", "'executable' is required"),
        ("typo.yaml", "- executable: true\n  argumnets: []\n", "unknown key(s) ['argumnets']"),
        ("empty.json", "[]", "non-empty list of tasks"),
        ("broken.json", "[{", "not valid JSON"),
        ("workload.txt", "echo", "a workload is a .py file"),
        ("neg.yaml", "- executable: sleep\n  timeout: -1\n", "timeout must be a positive number"),
        # YAML reads these as a boolean and numbers: refused, not passed on as "True" and "5".
        ("args.yaml", "- echo hi\n- executable: echo\n  arguments: [ok, true, 5]\n",
         'args.yaml: task #2: argument #2 is True (a boolean), not text: quote it in the file (e.g. "true", "5")'),
        ("envs.yaml", "- executable: env\n  env: {DEBUG: 1}\n",
         "envs.yaml: task #1: env DEBUG is 1 (a number), not text: quote it in the file"),
        ("opts.json", '[{"executable": "env", "task_backend_specific_kwargs": {"env": {"X": null}}}]',
         "opts.json: task #1: env X is None (null), not text: quote it in the file"),
    ],
)
def test_bad_workloads_are_clear_errors(tmp_path: pathlib.Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    result = rhapsody("run", str(path))
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_malformed_yaml_names_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("tasks:\n  - executable: [echo\n  - executable: true\n")
    result = rhapsody("run", str(path))
    assert result.returncode == 2
    assert f'in "{path}", line 2' in result.stderr
    assert "<unicode string>" not in result.stderr


def test_help_is_plain_text_and_describes_the_workload() -> None:
    top = rhapsody("--help")
    assert top.returncode == 0
    assert "Run workloads of tasks on a rhapsody backend" in top.stdout
    run = rhapsody("run", "--help")
    assert run.returncode == 0
    assert "a .py file defining 'async def main(session)', or a .yaml/.yml/.json list of executable tasks" in run.stdout
    assert "130  interrupted (Ctrl-C)" in run.stdout
    for text in (top.stdout, run.stdout):
        assert "`" not in text  # RST or Markdown markup shows as is in a terminal


def test_missing_workload_file() -> None:
    result = rhapsody("run", "/no/such/workload.py")
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_unknown_backend_and_bad_option(tmp_path: pathlib.Path) -> None:
    result = rhapsody("run", str(EXAMPLES / "shell_tasks.yaml"), "--backend", "nonesuch")
    assert result.returncode == 2
    assert "no backend named 'nonesuch'" in result.stderr
    assert "rhapsody-nonesuch" not in result.stderr  # no such distribution exists
    assert "rhapsody-dask (dask)" in result.stderr and "'rhapsody' entry-point group" in result.stderr
    result = rhapsody("run", str(EXAMPLES / "shell_tasks.yaml"), "--backend", "vllm")
    assert result.returncode == 2
    assert "it comes with the rhapsody-vllm distribution" in result.stderr
    result = rhapsody("run", str(EXAMPLES / "shell_tasks.yaml"), "-o", "nosuchopt=1")
    assert result.returncode == 2
    assert ("rhapsody: backend 'concurrent' (ConcurrentBackend) has no option 'nosuchopt'; its options "
            "are: executor, max_workers, processes, max_subprocesses") in result.stderr
    assert "unexpected keyword argument" not in result.stderr
    result = rhapsody("run", str(EXAMPLES / "shell_tasks.yaml"), "-o", "max_workers=0")
    assert result.returncode == 2
    assert "max_workers must be an integer >= 1" in result.stderr
    result = rhapsody("run", str(EXAMPLES / "shell_tasks.yaml"), "-o", "novalue")
    assert result.returncode == 2
    assert "expected KEY=VALUE" in result.stderr


def test_timeout_cancels_and_reports(tmp_path: pathlib.Path) -> None:
    tasks = tmp_path / "slow.yaml"
    tasks.write_text("- executable: sleep\n  arguments: ['60']\n")
    result = rhapsody("run", str(tasks), "--timeout", "1", timeout=60)
    assert result.returncode == 1
    assert "did not finish within 1 s" in result.stderr
    assert "│    0 │      0 │        1 │" in result.stdout


def test_backends_lists_builtins_as_json_and_table() -> None:
    result = rhapsody("backends", "--json")
    assert result.returncode == 0
    listed = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert listed["concurrent"]["available"] is True
    assert listed["noop"]["distribution"] == "rhapsody-core"
    table = rhapsody("backends")
    assert "concurrent" in table.stdout and "yes" in table.stdout


def test_version() -> None:
    result = rhapsody("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("rhapsody ")
