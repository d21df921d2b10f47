"""Workloads the command line runs: a Python file with ``async def main(session)``, or a YAML/JSON
list of executable tasks for users who write no Python."""

from __future__ import annotations

import importlib.util
import inspect
import json
import pathlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import cloudpickle
import yaml

from ..session import Session
from ..task import ComputeTask

Workload = Callable[[Session], Awaitable[Any]]

_TASK_KEYS = frozenset({"executable", "arguments", "uid", "name", "timeout", "cwd", "env", "shell",
                        "backend", "task_backend_specific_kwargs", "resources"})




class WorkloadError(Exception):
    """The workload file cannot be used; the message says where and why."""


def load_workload(path: pathlib.Path) -> Workload:
    """Return the coroutine function that runs the workload in ``path``.

    Raises:
        WorkloadError: no such file, an unknown suffix, a Python file without
            ``async def main(session)``, or a task list with a bad entry.
    """
    if not path.is_file():
        raise WorkloadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".py":
        return _load_python(path)
    if suffix in (".yaml", ".yml", ".json"):
        tasks = _load_task_list(path)
        return _run_task_list(tasks)
    raise WorkloadError(f"{path}: a workload is a .py file or a .yaml/.yml/.json task list")


def _load_python(path: pathlib.Path) -> Workload:
    spec = importlib.util.spec_from_file_location(f"rhapsody_workload_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise WorkloadError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    # Registered so that the module's own code (dataclasses, pickle by reference in this process)
    # can find it by name.
    sys.modules[spec.name] = module
    # The module name is made up, so no other process (a Dask worker, a process pool) can import
    # it: cloudpickle must ship the workload's functions and classes by value, not by reference.
    cloudpickle.register_pickle_by_value(module)
    sys.path.insert(0, str(path.parent.resolve()))
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if main is None or not inspect.iscoroutinefunction(main):
        raise WorkloadError(f"{path}: define `async def main(session)`; rhapsody calls it with a Session")
    return main  # type: ignore[no-any-return]


def _load_task_list(path: pathlib.Path) -> list[ComputeTask]:
    try:
        # YAML is read from the open file so that its error marks name the file, not
        # "<unicode string>".
        with path.open() as stream:
            data = json.load(stream) if path.suffix.lower() == ".json" else yaml.safe_load(stream)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise WorkloadError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
    if isinstance(data, dict) and "tasks" in data:
        data = data["tasks"]
    if not isinstance(data, list) or not data:
        raise WorkloadError(f"{path}: expected a non-empty list of tasks (or a mapping with 'tasks:')")
    return [_task_from_entry(path, index, entry) for index, entry in enumerate(data)]


def _task_from_entry(path: pathlib.Path, index: int, entry: Any) -> ComputeTask:
    where = f"{path}: task #{index + 1}"
    if isinstance(entry, str):
        entry = {"executable": entry, "shell": True}
    if not isinstance(entry, dict):
        raise WorkloadError(f"{where}: expected a mapping or a command string, got {entry!r}")
    unknown = set(entry) - _TASK_KEYS
    if unknown:
        raise WorkloadError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TASK_KEYS)}")
    if "executable" not in entry:
        raise WorkloadError(f"{where}: 'executable' is required")
    options = dict(entry.get("task_backend_specific_kwargs") or {})
    for key in ("cwd", "env", "shell"):
        if key in entry:
            options[key] = entry[key]
    env = options.get("env")
    if isinstance(env, dict):
        for key, value in env.items():
            if not isinstance(key, str):
                raise WorkloadError(f"{where}: an env name is {_not_text(key)}")
            if not isinstance(value, str):
                raise WorkloadError(f"{where}: env {key} is {_not_text(value)}")
    arguments = entry.get("arguments", [])
    if not isinstance(arguments, list):
        raise WorkloadError(f"{where}: 'arguments' must be a list")
    for position, argument in enumerate(arguments):
        if not isinstance(argument, str):
            raise WorkloadError(f"{where}: argument #{position + 1} is {_not_text(argument)}")
    try:
        return ComputeTask(
            executable=entry["executable"],
            arguments=arguments,
            uid=entry.get("uid"),
            name=entry.get("name") or _default_name(index, entry["executable"], arguments),
            timeout=entry.get("timeout"),
            backend=entry.get("backend"),
            task_backend_specific_kwargs=options,
            resources=entry.get("resources"),
        )
    except (TypeError, ValueError) as exc:
        raise WorkloadError(f"{where}: {exc}") from None


_NAME_LENGTH = 60


def _default_name(index: int, executable: Any, arguments: list[str]) -> str:
    """``"#3 sleep 1"``: the entry's position in the file and its command, cut to a line."""
    command = " ".join([str(executable), *arguments])
    if len(command) > _NAME_LENGTH:
        command = command[:_NAME_LENGTH - 1] + "…"
    return f"#{index + 1} {command}"


def _not_text(value: Any) -> str:
    # Refused rather than converted with str(): YAML reads true, yes, 5, 1.0, 010 and null as
    # other types, and str() would pass "True", "5.0" or "None" where the user meant what they
    # wrote.
    kind = _KINDS.get(type(value), f"a {type(value).__name__}")
    return (f"{value!r} ({kind}), not text: quote it in the file (e.g. \"true\", \"5\") so that "
            "it is passed as written")


_KINDS = {bool: "a boolean", int: "a number", float: "a number", type(None): "null",
          list: "a list", dict: "a mapping"}


def _run_task_list(tasks: list[ComputeTask]) -> Workload:
    async def main(session: Session) -> None:
        await session.submit_tasks(tasks)
        await session.wait_tasks(tasks)

    return main
