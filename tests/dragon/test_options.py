"""Bad input is refused with a message naming it (no Dragon runtime needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import rhapsody
from rhapsody_dragon import DragonBackend
from rhapsody_dragon.templates import check_options, command_line, find_program


def _exe(**options: Any) -> rhapsody.ComputeTask:
    return rhapsody.ComputeTask(executable="/bin/echo", arguments=["hi"], task_backend_specific_kwargs=options)


def test_plugin_registers_the_backend() -> None:
    backend = rhapsody.get_backend("dragon")
    assert isinstance(backend, DragonBackend)
    assert backend.name == "dragon"
    assert backend.task_kinds == frozenset({"function", "executable"})


def test_name_is_the_instance_name_in_a_session() -> None:
    backend = rhapsody.get_backend("dragon", name="dragon-io", num_nodes=1)
    assert (backend.name, DragonBackend.name) == ("dragon-io", "dragon")
    assert "name='dragon-io'" in repr(backend)


def test_check_available_passes_with_dragonhpc_installed() -> None:
    DragonBackend.check_available()


@pytest.mark.parametrize(("options", "message"), [
    ({"num_nodes": 0}, "num_nodes must be an integer >= 1"),
    ({"pool_nodes": "2"}, "pool_nodes must be an integer >= 1"),
    ({"workers_per_node": True}, "workers_per_node must be an integer >= 1"),
    ({"shutdown_timeout": 0}, "shutdown_timeout must be a positive number"),
    ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
    ({"function_mode": "threads"}, r"function_mode must be one of \('pool', 'batch'\), got 'threads'"),
])
def test_bad_constructor_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DragonBackend(**options)


def test_start_outside_a_dragon_runtime_says_how_to_run() -> None:
    from dragon.infrastructure.parameters import this_process

    if this_process.gs_qd:
        pytest.skip("this process runs inside a Dragon runtime")
    with pytest.raises(RuntimeError, match="dragon launcher"):
        asyncio.run(DragonBackend()._ensure_initialized())


def test_submit_before_start_is_refused() -> None:
    task = rhapsody.ComputeTask(function=abs, args=(-1,))
    # BaseBackend refuses a backend no session has bound, before Dragon's own "not started" check.
    with pytest.raises(RuntimeError, match="not attached to a session"):
        asyncio.run(DragonBackend().submit_tasks([task]))


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"cwd": "/tmp"}, ValueError, r"\['cwd'\].*process_template"),
    ({"env": {"A": "1"}}, ValueError, r"\['env'\].*process_template"),
    ({"ranks": 2}, ValueError, r"unknown task_backend_specific_kwargs \['ranks'\]"),
    ({"process_template": {}, "process_templates": [(1, {})]}, ValueError, "not both"),
    ({"process_template": {"target": "x"}}, ValueError, r"unknown process_template options \['target'\]"),
    ({"process_template": {"stdout": "f"}}, ValueError, r"\['stdout'\]"),
    ({"process_template": "cwd=/tmp"}, TypeError, "process_template must be a dict"),
    ({"process_template": {"cwd": 3}}, TypeError, "cwd must be a path"),
    ({"process_template": {"env": {"A": 1}}}, TypeError, "env must be a dict of str to str"),
    ({"process_templates": []}, TypeError, "non-empty list"),
    ({"process_templates": [(0, {})]}, ValueError, "nranks must be an integer >= 1, got 0"),
    ({"process_templates": [(2,)]}, TypeError, r"items are \(nranks, dict\)"),
    ({"process_templates": [(1, {"bogus": 1})]}, ValueError, r"unknown process_templates options \['bogus'\]"),
    ({"shell": "yes"}, TypeError, "shell must be True or False"),
])
def test_bad_executable_options_are_named(options: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        check_options(_exe(**options), function=False)


def test_function_tasks_take_no_options() -> None:
    task = rhapsody.ComputeTask(function=abs, args=(1,), task_backend_specific_kwargs={"process_template": {}})
    with pytest.raises(ValueError, match=r"function tasks take no task_backend_specific_kwargs, got \['process_template'\]"):
        check_options(task, function=True)


def test_good_options_become_a_spec() -> None:
    spec = check_options(_exe(process_templates=[(2, {"cwd": "/tmp"}), (3, {})]), function=False)
    assert spec is not None
    assert (spec.job, spec.ranks, spec.shell) == (True, 5, False)
    single = check_options(_exe(shell=True), function=False)
    assert single is not None and (single.job, single.ranks) == (False, 1)


def test_shell_command_line_quotes_arguments() -> None:
    task = rhapsody.ComputeTask(executable="echo", arguments=["a b", "$HOME"],
                                task_backend_specific_kwargs={"shell": True})
    spec = check_options(task, function=False)
    assert spec is not None
    assert command_line(task, spec) == ["/bin/sh", "-c", "echo 'a b' '$HOME'"]


def test_missing_program_is_named() -> None:
    task = rhapsody.ComputeTask(executable="/nonexistent/rhapsody-prog")
    spec = check_options(task, function=False)
    assert spec is not None
    with pytest.raises(FileNotFoundError, match="cannot find program '/nonexistent/rhapsody-prog'"):
        find_program(task, spec)


def test_resources_ranks_make_an_executable_a_job() -> None:
    task = rhapsody.ComputeTask(executable="/bin/echo", resources={"ranks": 3, "cores_per_rank": 1})
    spec = check_options(task, function=False)
    assert spec is not None and (spec.job, spec.ranks, len(spec.groups)) == (True, 3, 1)
    # process_templates, the escape hatch, wins over resources ranks.
    task = rhapsody.ComputeTask(executable="/bin/echo", resources={"ranks": 3},
                                task_backend_specific_kwargs={"process_templates": [(2, {})]})
    spec = check_options(task, function=False)
    assert spec is not None and (spec.job, spec.ranks) == (True, 2)
    single = check_options(rhapsody.ComputeTask(executable="/bin/echo", resources={"ranks": 1}), function=False)
    assert single is not None and (single.job, single.ranks) == (False, 1)


@pytest.mark.parametrize(("resources", "function", "message"), [
    ({"cores_per_rank": 2}, False, r"cores_per_rank=2: Dragon .* reserves no CPU cores"),
    ({"gpus_per_rank": 1}, False, r"gpus_per_rank=1: .*gpu_affinity"),
    ({"gpus_per_rank": 0.5}, True, r"gpus_per_rank=0.5"),
    ({"memory_per_rank": 64}, False, r"memory_per_rank=64 MiB: Dragon neither reserves nor limits memory"),
    ({"ranks": 2}, True, r"ranks=2: a function task runs as one process"),
    ({"cores_per_rank": 4}, True, r"cores_per_rank=4"),
])
def test_resources_dragon_cannot_honour_are_refused_by_name(
        resources: dict[str, Any], function: bool, message: str) -> None:
    task = (rhapsody.ComputeTask(function=abs, args=(1,), resources=resources) if function
            else rhapsody.ComputeTask(executable="/bin/echo", resources=resources))
    with pytest.raises(ValueError, match=message):
        check_options(task, function=function)


def test_a_policy_in_the_process_template_wins_over_cores_and_gpus() -> None:
    from dragon.infrastructure.policy import Policy

    policy = Policy(cpu_affinity=[0, 1])
    task = rhapsody.ComputeTask(executable="/bin/echo", resources={"cores_per_rank": 2, "gpus_per_rank": 1},
                                task_backend_specific_kwargs={"process_template": {"policy": policy}})
    spec = check_options(task, function=False)
    assert spec is not None and spec.groups[0][1]["policy"] is policy


def test_function_defaults_are_accepted() -> None:
    task = rhapsody.ComputeTask(function=abs, args=(1,), resources={"ranks": 1, "cores_per_rank": 1,
                                                                   "gpus_per_rank": 0})
    assert check_options(task, function=True) is None
