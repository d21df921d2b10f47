"""Programs written for RHAPSODY (rhapsody-py) run unchanged: every old name, the error hierarchy,
capture_stdio, function tasks' "" output, enable_logging, and docs/migrating.md's examples.

The programs under legacy_programs/ run as real subprocesses, as a user would run them."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import io
import logging
import os
import pathlib
import re
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import rhapsody
import rhapsody.api
import rhapsody.backends
from rhapsody import (
    BackendUnavailableError,
    ComputeTask,
    RhapsodyError,
    Session,
    SessionClosedError,
    TaskExecutionError,
    WorkerLostError,
)
from rhapsody.builtin.concurrent import ConcurrentBackend

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROGRAMS = pathlib.Path(__file__).with_name("legacy_programs")
NO_HANG = 120


def run_program(path: pathlib.Path, *, plugins: str = "") -> subprocess.CompletedProcess[str]:
    """Run a program as a user would, showing every DeprecationWarning (Python hides those
    raised outside __main__ by default)."""
    env = {**os.environ, "RHAPSODY_LOAD_PLUGINS": plugins}
    return subprocess.run([sys.executable, "-W", "always::DeprecationWarning", str(path)],
                          capture_output=True, text=True, timeout=NO_HANG, env=env, cwd=path.parent)


def rhapsody_warnings(stderr: str) -> list[str]:
    return re.findall(r"DeprecationWarning: (.*)", stderr)


def lookup(module: Any, name: str) -> tuple[Any, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(module, name)
    return value, [w for w in caught if issubclass(w.category, DeprecationWarning)]


def _old_names(module: Any) -> dict[str, Any]:
    return dict(module._OLD_NAMES)


# -- legacy programs, run unchanged ------------------------------------------------------------


def test_the_native_api_program_runs_unchanged() -> None:
    result = run_program(PROGRAMS / "native_api.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "DONE: greeting number 1 from /bin/sh",
        "DONE: greeting number 2 from /bin/sh",
        f"rhapsody {importlib.metadata.version('rhapsody-core')}",
    ]
    said = rhapsody_warnings(result.stderr)
    assert len(said) == 2, result.stderr  # one per old name the program uses
    assert "rhapsody.backends.ConcurrentExecutionBackend is a RHAPSODY name" in said[0]
    assert "write rhapsody.get_backend('concurrent'" in said[0]
    assert "backend.shutdown() is RHAPSODY's name, deprecated: write await backend.close()" in said[1]


def test_the_functions_and_errors_program_runs_unchanged() -> None:
    result = run_program(PROGRAMS / "functions_and_errors.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "DONE 9 stdout='' stderr=''",
        "DONE 2.5 stdout='' stderr=''",
        "TaskExecutionError exit_code=3 stderr=broken rhapsody_error=True",
        "straight to the terminal",  # capture_stdio=False: the executable wrote it itself
        "DONE stdout=None",
        "SessionError: cannot submit to a closed session",
        "version ok: True",
    ]
    said = rhapsody_warnings(result.stderr)
    assert len(said) == 2, result.stderr
    assert said[0].startswith("rhapsody.api.SessionError is a RHAPSODY name, deprecated: write "
                              "rhapsody.SessionClosedError")
    assert said[1].startswith("rhapsody.backends.ConcurrentExecutionBackend is a RHAPSODY name")


def test_a_process_pool_program_runs_unchanged() -> None:
    result = run_program(PROGRAMS / "process_pool.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[0, 1, 4, 9, 16, 25]"
    assert lines[1] == "workers other than this process: True"
    assert lines[2] == "executor shut down with the backend: True"


# -- every old name ----------------------------------------------------------------------------


def test_rhapsody_api_re_exports_the_public_api_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in rhapsody.__all__:
            assert getattr(rhapsody.api, name) is getattr(rhapsody, name), name
            assert getattr(rhapsody.backends, name, getattr(rhapsody, name)) is getattr(rhapsody, name)
    assert sorted(rhapsody.api.__all__) == sorted(rhapsody.__all__)
    for name in ("BaseBackend", "Session", "get_backend", "discover_backends"):
        assert getattr(rhapsody.backends, name) is getattr(rhapsody, name)


@pytest.mark.parametrize(("module", "name", "expected"), [
    (rhapsody.api, "BaseTask", rhapsody.Task),
    (rhapsody.api, "SessionError", SessionClosedError),
    (rhapsody.api, "BackendError", BackendUnavailableError),
    (rhapsody.api, "TaskValidationError", (ValueError, TypeError)),
    (rhapsody.api, "ResourceError", ValueError),
    (rhapsody, "BaseTask", rhapsody.Task),
    (rhapsody, "SessionError", SessionClosedError),
    (rhapsody, "BackendError", BackendUnavailableError),
    (rhapsody, "TaskValidationError", (ValueError, TypeError)),
    (rhapsody, "ResourceError", ValueError),
    (rhapsody.backends, "TasksMainStates", rhapsody.TaskState),
])
def test_each_renamed_name_gives_ours_with_one_warning_saying_what_to_write(
        module: Any, name: str, expected: Any) -> None:
    value, said = lookup(module, name)
    assert value == expected
    assert len(said) == 1
    message = str(said[0].message)
    assert message.startswith(f"{module.__name__}.{name} is a RHAPSODY name, deprecated: write ")
    assert "docs/migrating.md" in message
    assert said[0].filename == __file__  # points at the line that named it


def test_every_old_name_is_tested_here() -> None:
    # The parametrised tests above and below cover the whole tables: a new entry needs a test.
    covered = {"BaseTask", "SessionError", "BackendError", "TaskValidationError", "ResourceError",
               "TaskStateManager", "BackendRegistry"}
    assert set(_old_names(rhapsody.api)) == covered
    assert set(_old_names(rhapsody.backends)) == {
        "ConcurrentExecutionBackend", "DaskExecutionBackend", "DragonExecutionBackend",
        "DragonExecutionBackendV3", "RadicalExecutionBackend", "TasksMainStates",
        "DragonExecutionBackendV1", "DragonExecutionBackendV2", "DragonTelemetryCollector",
        "DragonVllmInferenceBackend", "StateMapper", "BackendRegistry"}


@pytest.mark.parametrize(("module", "name", "says"), [
    ("rhapsody.api", "TaskStateManager", "session.wait_tasks"),
    ("rhapsody.api", "BackendRegistry", "rhapsody.discover_backends()"),
    ("rhapsody", "BackendRegistry", "rhapsody.get_backend(name)"),
    ("rhapsody.backends", "BackendRegistry", "rhapsody.register_plugin"),
    ("rhapsody.backends", "StateMapper", "rhapsody.TaskState"),
    ("rhapsody.backends", "DragonExecutionBackendV1", "get_backend('dragon')"),
    ("rhapsody.backends", "DragonExecutionBackendV2", "get_backend('dragon')"),
    ("rhapsody.backends", "DragonTelemetryCollector", "rhapsody_task_states_changed"),
    ("rhapsody.backends", "DragonVllmInferenceBackend", "get_backend('vllm'"),
])
def test_names_with_no_counterpart_refuse_on_import_saying_why(module: str, name: str, says: str) -> None:
    with pytest.raises(ImportError) as caught:
        exec(f"from {module} import {name}", {})
    message = str(caught.value)
    assert message.startswith(f"{module}.{name} (RHAPSODY) has no counterpart in rhapsody: ")
    assert says in message and "docs/migrating.md" in message


def test_unknown_names_stay_attribute_errors() -> None:
    for module in (rhapsody, rhapsody.api, rhapsody.backends):
        assert not hasattr(module, "NoSuchThing")
        assert not hasattr(module, "__wrapped__")  # tools probe dunders with getattr(..., None)


def test_the_validation_error_name_catches_what_a_bad_task_raises() -> None:
    validation_error, _ = lookup(rhapsody.api, "TaskValidationError")
    with pytest.raises(validation_error):
        ComputeTask()  # neither function nor executable: ValueError
    with pytest.raises(validation_error):
        ComputeTask(executable="/bin/echo", arguments="-n")  # a string, not a list: TypeError
    resource_error, _ = lookup(rhapsody.api, "ResourceError")
    with pytest.raises(resource_error, match="resources"):
        ComputeTask(function=print, resources={"gpus_per_rank": -1})


async def test_the_resource_error_name_catches_a_request_the_backend_refuses() -> None:
    resource_error, _ = lookup(rhapsody.api, "ResourceError")
    async with Session(backends=[rhapsody.get_backend("concurrent", gpus=1)]) as session:
        greedy = ComputeTask(executable="/bin/true", resources={"gpus_per_rank": 2})
        with pytest.raises(resource_error, match="asks for 2 GPUs"):
            await session.submit_tasks([greedy])
        assert greedy.state == "NEW"  # refused at submit, before anything ran


def test_removed_task_parameters_still_say_to_use_resources() -> None:
    for old in ("gpu", "ranks"):
        with pytest.raises(TypeError, match=r"no longer takes .*resources="):
            ComputeTask(executable="/bin/true", **{old: 2})


# -- ConcurrentExecutionBackend ----------------------------------------------------------------


async def test_concurrent_execution_backend_takes_the_executor_positionally_and_owns_it() -> None:
    cls, said = lookup(rhapsody.backends, "ConcurrentExecutionBackend")
    assert len(said) == 1 and issubclass(cls, ConcurrentBackend)
    assert cls.__name__ == "ConcurrentExecutionBackend"
    executor = ThreadPoolExecutor(max_workers=1)
    backend = cls(executor, "legacy")
    assert backend.name == "legacy"
    async with Session(backends=[backend]) as session:
        task = ComputeTask(function=sum, args=([1, 2],), backend="legacy")
        await session.submit_tasks([task])
        assert (await task).return_value == 3
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(print)  # RHAPSODY's shutdown() shut the given executor down too
    with pytest.raises(TypeError, match="ThreadPoolExecutor or ProcessPoolExecutor"):
        cls("not an executor")
    # After RHAPSODY's parameters, ours by keyword.
    with pytest.raises(ValueError, match="max_subprocesses must be an integer >= 1"):
        cls(None, "io", max_subprocesses=0)


async def test_concurrent_execution_backend_create_returns_a_started_backend() -> None:
    cls, _ = lookup(rhapsody.backends, "ConcurrentExecutionBackend")
    backend = await cls.create(ThreadPoolExecutor(max_workers=1))
    assert backend.initialized
    await backend.close()


async def test_shutdown_is_close_with_one_warning() -> None:
    backend = ConcurrentBackend()
    await backend
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await backend.shutdown()
        await backend.shutdown()  # like close(), a second call returns at once
    assert [str(w.message) for w in caught] == [
        "backend.shutdown() is RHAPSODY's name, deprecated: write await backend.close() "
        "(see docs/migrating.md)"] * 2
    assert caught[0].filename == __file__
    assert repr(backend).endswith("closed>")


def test_dask_execution_backend_says_it_needs_rhapsody_dask(monkeypatch: pytest.MonkeyPatch) -> None:
    rhapsody.backends._dask_execution_backend.cache_clear()
    monkeypatch.setitem(sys.modules, "rhapsody_dask", None)  # as if it were not installed
    try:
        with pytest.raises(ImportError, match=r"DaskExecutionBackend needs the rhapsody-dask "
                           r"distribution.*pip install \./packages/rhapsody-dask"):
            exec("from rhapsody.backends import DaskExecutionBackend", {})
    finally:
        rhapsody.backends._dask_execution_backend.cache_clear()


@pytest.mark.parametrize(("name", "distribution"), [
    ("DragonExecutionBackend", "rhapsody-dragon"), ("DragonExecutionBackendV3", "rhapsody-dragon"),
    ("RadicalExecutionBackend", "rhapsody-radical")])
def test_engine_backends_name_their_distribution_when_it_is_missing(
        name: str, distribution: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = distribution.replace("-", "_")
    monkeypatch.setitem(sys.modules, module, None)
    for builder in (rhapsody.backends._dragon_execution_backend,
                    rhapsody.backends._radical_execution_backend):
        builder.cache_clear()
    try:
        with pytest.raises(ImportError, match=f"rhapsody.backends.{name.removesuffix('V3')} needs "
                           f"the {distribution} distribution.*pip install ./packages/{distribution}"):
            getattr(rhapsody.backends, name)
    finally:
        for builder in (rhapsody.backends._dragon_execution_backend,
                        rhapsody.backends._radical_execution_backend):
            builder.cache_clear()


# -- the error hierarchy, on real failures -----------------------------------------------------


def test_our_errors_derive_from_rhapsody_error_and_keep_their_old_bases() -> None:
    for error in (TaskExecutionError, WorkerLostError, BackendUnavailableError, SessionClosedError):
        assert issubclass(error, RhapsodyError)
    for error in (WorkerLostError, BackendUnavailableError, SessionClosedError):
        assert issubclass(error, RuntimeError)  # `except RuntimeError` keeps catching them


def die() -> None:
    os._exit(9)


async def test_real_failures_are_caught_as_rhapsody_error() -> None:
    with pytest.raises(RhapsodyError, match="no backend named 'no-such-engine'"):
        rhapsody.get_backend("no-such-engine")
    session = Session(backends=[ConcurrentBackend(processes=1)])
    async with session:
        failing = ComputeTask(executable="/bin/sh", arguments=["-c", "exit 4"])
        lost = ComputeTask(function=die, retries=0)
        futures = await session.submit_tasks([failing, lost])
        for future in futures:
            with pytest.raises(RhapsodyError):
                await asyncio.wait_for(future, NO_HANG)
        assert isinstance(failing.exception, TaskExecutionError) and failing.exit_code == 4
        assert isinstance(lost.exception, WorkerLostError)
    with pytest.raises(RhapsodyError, match="closed session"):
        await session.submit_tasks([ComputeTask(function=print)])


# -- task fields -------------------------------------------------------------------------------


async def test_function_tasks_read_empty_output_and_executables_none_until_they_ran() -> None:
    function = ComputeTask(function=sum, args=([1],))
    executable = ComputeTask(executable="/bin/echo", arguments=["hi"])
    assert (function.stdout, function["stderr"], function.get("stdout")) == ("", "", "")
    assert (executable.stdout, executable["stderr"], executable.get("stdout")) == (None, None, None)
    assert "stdout" not in function and "stdout" not in function.to_dict(include_results=True)
    async with Session() as session:
        await session.submit_tasks([function, executable])
        await session.wait_tasks([function, executable])
    assert (function.state, function.stdout, function.stderr) == ("DONE", "", "")
    assert (executable.state, executable.stdout, executable.stderr) == ("DONE", "hi\n", "")


def test_capture_stdio_is_checked_and_kept_only_where_it_changes_something() -> None:
    assert ComputeTask(executable="/bin/true", capture_stdio=True).capture_stdio is True
    assert "capture_stdio" not in ComputeTask(executable="/bin/true", capture_stdio=True)
    quiet = ComputeTask(executable="/bin/true", capture_stdio=False)
    assert quiet.capture_stdio is False and quiet.to_dict()["capture_stdio"] is False
    assert rhapsody.Task.from_dict(quiet.to_dict()).capture_stdio is False
    # A function's output is never captured: the flag changes nothing there.
    assert "capture_stdio" not in ComputeTask(function=print, capture_stdio=False)
    with pytest.raises(TypeError, match="capture_stdio must be True or False"):
        ComputeTask(executable="/bin/true", capture_stdio="yes")  # type: ignore[arg-type]


# -- enable_logging and __version__ ------------------------------------------------------------


def test_enable_logging_shows_our_records_once_and_leaves_the_root_logger_alone() -> None:
    root_handlers = list(logging.getLogger().handlers)
    first, second = io.StringIO(), io.StringIO()
    try:
        rhapsody.enable_logging(logging.DEBUG, stream=first)
        rhapsody.enable_logging("info", stream=second)  # replaces the first handler
        logging.getLogger("rhapsody.session").debug("hidden at INFO")
        logging.getLogger("rhapsody_dask.backend").info("dask says hello")
        assert first.getvalue() == ""
        assert second.getvalue().count("dask says hello") == 1
        assert "INFO" in second.getvalue() and "hidden" not in second.getvalue()
        assert logging.getLogger().handlers == root_handlers
    finally:
        for name in rhapsody.logs.LOGGERS:
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.setLevel(logging.NOTSET)
            logger.propagate = True
    with pytest.raises(ValueError, match="unknown logging level 'LOUD'"):
        rhapsody.enable_logging("LOUD")
    with pytest.raises(TypeError, match="level must be a logging level"):
        rhapsody.enable_logging(None)  # type: ignore[arg-type]


def test_version_is_the_installed_distributions() -> None:
    assert rhapsody.__version__ == importlib.metadata.version("rhapsody-core")


# -- docs/migrating.md -------------------------------------------------------------------------


def migrating_blocks() -> list[str]:
    page = (ROOT / "docs" / "migrating.md").read_text()
    return [code for code in re.findall(r"```python\n(.*?)```", page, re.S)
            if "pip install rhapsody-" not in code]


def test_migrating_page_examples_print_what_the_page_says(tmp_path: pathlib.Path) -> None:
    page = (ROOT / "docs" / "migrating.md").read_text()
    blocks = migrating_blocks()
    assert len(blocks) >= 2
    for index, code in enumerate(blocks):
        script = tmp_path / f"block{index}.py"
        script.write_text(code)
        result = run_program(script)
        assert result.returncode == 0, f"block {index}:\n{result.stderr}"
        printed = result.stdout.strip()
        assert printed and f"prints\n\n```\n{printed}\n```" in page, (index, printed)


def test_migrating_table_names_every_old_name() -> None:
    page = (ROOT / "docs" / "migrating.md").read_text()
    for name in (*_old_names(rhapsody.api), *_old_names(rhapsody.backends)):
        assert f"`{name}" in page, name
    for removed in ("gpu=", "ranks=", "memory=", "cpu_threads=", "capture_stdio", "shutdown()",
                    "enable_logging", "__version__"):
        assert removed in page, removed


def test_docs_link_to_the_migrating_page() -> None:
    assert "docs/migrating.md" in (ROOT / "README.md").read_text()
    assert "migrating.md" in (ROOT / "docs" / "getting-started.md").read_text()


def test_importing_rhapsody_imports_no_old_module() -> None:
    code = "import sys, rhapsody; print('rhapsody.api' in sys.modules, 'rhapsody.backends' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=NO_HANG)
    assert result.stdout.strip() == "False False", result.stderr
    importlib.import_module("rhapsody.logs")
