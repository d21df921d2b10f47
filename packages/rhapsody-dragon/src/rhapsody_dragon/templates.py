"""Checks tasks' ``task_backend_specific_kwargs`` and ``resources=``, and turns executables into
ProcessTemplates.

Accepted keys: ``process_template`` (a dict), ``process_templates`` (``[(nranks, dict), ...]``)
and ``shell`` (bool). Template dicts take ``cwd``, ``env``, ``policy`` and ``options``: the task
itself supplies the program, its arguments and where its output goes.

Portable resources (``ComputeTask(resources=...)``): ``ranks`` > 1 runs an executable as a Dragon
job of that many ranks (``process_templates`` wins when given). What Dragon places but does not
reserve is refused at submit, naming the key: more than one core per rank, GPUs and memory (a
``process_template`` policy pins cores or GPUs, and then wins over ``cores_per_rank`` and
``gpus_per_rank``). A function task runs as one process with one core: it takes only the defaults.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rhapsody import Resources, Task
from rhapsody.resources import resources_of

from . import runner

TASK_KEYS = frozenset({"process_template", "process_templates", "shell"})
TEMPLATE_KEYS = frozenset({"cwd", "env", "policy", "options"})


@dataclass(frozen=True)
class ProcessSpec:
    """A checked executable task: its rank groups and what placement needs to know."""

    groups: list[tuple[int, dict[str, Any]]]
    shell: bool
    job: bool
    ranks: int
    hostnames: frozenset[str] = field(default_factory=frozenset)


def check_options(task: Task, *, function: bool) -> ProcessSpec | None:
    """Check a task's ``task_backend_specific_kwargs`` and ``resources=``.

    Returns the executable's :class:`ProcessSpec` (``None`` for a function task); ``resources``
    ``ranks`` > 1 makes it a job of that many ranks unless ``process_templates`` says otherwise.

    Raises:
        ValueError: an unknown key (named), both ``process_template`` and
            ``process_templates``, options on a function task, a rank count below 1, or a
            ``resources`` key Dragon cannot honour (named, with what it offers instead).
        TypeError: a value of the wrong type.
    """
    uid = task["uid"]
    options = task["task_backend_specific_kwargs"]
    resources = resources_of(task)
    if function:
        if resources is not None:
            _check_resources(uid, resources, pinned=False, function=True)
        if options:
            raise ValueError(
                f"dragon: task {uid}: function tasks take no task_backend_specific_kwargs, got "
                f"{sorted(options)} (process_template, process_templates and shell are for executables)"
            )
        return None
    unknown = set(options) - TASK_KEYS
    if unknown:
        hint = ""
        if unknown & {"cwd", "env"}:
            hint = '; on Dragon, cwd and env go into {"process_template": {"cwd": ..., "env": ...}}'
        raise ValueError(
            f"dragon: task {uid}: unknown task_backend_specific_kwargs {sorted(unknown)} "
            f"(it takes {sorted(TASK_KEYS)}){hint}"
        )
    if "process_template" in options and "process_templates" in options:
        raise ValueError(f"dragon: task {uid}: give process_template or process_templates, not both")
    shell = options.get("shell", False)
    if not isinstance(shell, bool):
        raise TypeError(f"dragon: task {uid}: shell must be True or False, got {shell!r}")
    if "process_templates" in options:
        raw = options["process_templates"]
        if not isinstance(raw, (list, tuple)) or not raw:
            raise TypeError(
                f"dragon: task {uid}: process_templates must be a non-empty list of (nranks, dict), got {raw!r}"
            )
        groups = []
        for item in raw:
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise TypeError(f"dragon: task {uid}: process_templates items are (nranks, dict), got {item!r}")
            nranks, template = item
            if isinstance(nranks, bool) or not isinstance(nranks, int) or nranks < 1:
                raise ValueError(f"dragon: task {uid}: nranks must be an integer >= 1, got {nranks!r}")
            groups.append((nranks, _check_template(uid, "process_templates", template)))
        job = True
    else:
        template = options.get("process_template", {})
        groups = [(1, _check_template(uid, "process_template", template))]
        job = False
    if resources is not None:
        _check_resources(uid, resources, pinned=any(t.get("policy") is not None for _, t in groups),
                         function=False)
        if resources.ranks > 1 and not job:
            # An MPI job of that many ranks, as process_templates=[(ranks, template)] would be.
            groups, job = [(resources.ranks, groups[0][1])], True
    hostnames = frozenset(
        host for _, template in groups if (host := _requested_host(template.get("policy"))) is not None
    )
    return ProcessSpec(groups=groups, shell=shell, job=job, ranks=sum(n for n, _ in groups),
                       hostnames=hostnames)


def _check_resources(uid: str, resources: Resources, *, pinned: bool, function: bool) -> None:
    """Refuse, naming the key, what of ``resources`` Dragon cannot honour for this task
    (``pinned``: its process template gives a placement policy, which wins for cores and GPUs)."""
    where = "a function task" if function else "an executable"
    if function and resources.ranks > 1:
        raise ValueError(f"dragon: task {uid}: resources ranks={resources.ranks}: a function task runs as one "
                         "process; run MPI ranks as an executable (resources={'ranks': n} makes it a job)")
    if resources.cores_per_rank > 1 and not pinned:
        raise ValueError(
            f"dragon: task {uid}: resources cores_per_rank={resources.cores_per_rank}: Dragon places each "
            f"process of {where} on a node but reserves no CPU cores for it; ask for 1 core per rank, or "
            "pin cores with a process_template policy (Policy(cpu_affinity=[...]))")
    if resources.gpus_per_rank and (function or not pinned):
        raise ValueError(
            f"dragon: task {uid}: resources gpus_per_rank={resources.gpus_per_rank}: rhapsody-dragon does not "
            f"assign GPUs from resources=; for {where}, give executables a process_template policy with "
            "gpu_affinity (dragon.native.machine.System().gpu_policies())")
    if resources.memory_per_rank is not None:
        raise ValueError(
            f"dragon: task {uid}: resources memory_per_rank={resources.memory_per_rank} MiB: Dragon neither "
            "reserves nor limits memory per process; leave memory_per_rank out")


def _check_template(uid: str, key: str, template: Any) -> dict[str, Any]:
    if not isinstance(template, Mapping):
        raise TypeError(f"dragon: task {uid}: {key} must be a dict of ProcessTemplate options, got {template!r}")
    unknown = set(template) - TEMPLATE_KEYS
    if unknown:
        raise ValueError(
            f"dragon: task {uid}: unknown {key} options {sorted(unknown)} (it takes {sorted(TEMPLATE_KEYS)}; "
            "the program, its arguments and its output come from the task)"
        )
    cwd = template.get("cwd")
    if cwd is not None and not isinstance(cwd, (str, os.PathLike)):
        raise TypeError(f"dragon: task {uid}: {key} cwd must be a path, got {cwd!r}")
    env = template.get("env")
    if env is not None and not (
        isinstance(env, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise TypeError(f"dragon: task {uid}: {key} env must be a dict of str to str, got {env!r}")
    return dict(template)


def _requested_host(policy: Any) -> str | None:
    if policy is None:
        return None
    placement = getattr(policy, "placement", None)
    if getattr(placement, "name", None) == "HOST_NAME":
        return str(policy.host_name)
    return None


def command_line(task: Task, spec: ProcessSpec) -> list[str]:
    """The argv a task runs: its program and arguments, or ``/bin/sh -c`` for ``shell``."""
    if spec.shell:
        return ["/bin/sh", "-c", " ".join([task["executable"], *map(shlex.quote, task["arguments"])])]
    return [task["executable"], *task["arguments"]]


def find_program(task: Task, spec: ProcessSpec) -> None:
    """Fail early, as Dragon's own ProcessTemplate does, when the program cannot be found.

    Raises:
        FileNotFoundError: no such program on ``PATH`` (the task's ``env`` PATH if it sets one)
            or relative to its working directory.
    """
    if spec.shell:
        return
    program = task["executable"]
    template = spec.groups[0][1]
    cwd = Path(template.get("cwd") or ".")
    if os.sep in program:
        path = Path(program) if os.path.isabs(program) else cwd / program
        if os.access(path, os.X_OK) and path.is_file():
            return
    else:
        env = template.get("env")
        search = env.get("PATH") if env is not None and "PATH" in env else None
        if shutil.which(program, path=search) is not None:
            return
    raise FileNotFoundError(f"dragon: task {task['uid']}: cannot find program {program!r}")


def build_templates(task: Task, spec: ProcessSpec, *, pid_file: Path | None) -> list[tuple[int, Any]]:
    """Dragon ProcessTemplates for a checked task.

    A single process runs under :mod:`rhapsody_dragon.runner` (its own process group, timeout,
    pid file); job ranks run the program directly so that PMI sees it.
    """
    from dragon.native.process import ProcessTemplate

    argv = command_line(task, spec)
    if not spec.job:
        timeout = task["timeout"]
        # By file path and isolated (-I): the runner needs only the standard library, and then
        # starts without importing rhapsody or Dragon.
        argv = [sys.executable, "-I", runner.__file__, str(pid_file),
                "-" if timeout is None else repr(float(timeout)), "--", *argv]
    program, *args = argv
    return [(nranks, ProcessTemplate(program, args=tuple(args), **options)) for nranks, options in spec.groups]
