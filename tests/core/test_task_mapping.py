"""A task as the mapping it is: keys, ``in``, len, iteration, copies and equality agree; no
task -> future -> task cycle; ``to_dict``/``from_dict`` round trips through JSON."""

from __future__ import annotations

import asyncio
import copy
import gc
import json

import pytest

from rhapsody import AITask, ComputeTask, Session, TaskExecutionError
from rhapsody.task import Task, _WeakRef
from rhapsody.testing import workloads


def test_keys_in_len_iteration_and_copies_agree_on_the_stored_fields() -> None:
    task = ComputeTask(function=workloads.add, args=(1, 2))
    stored = {"uid", "backend", "state", "function", "args"}
    assert set(task.keys()) == set(task) == set(dict(task)) == set(task.copy()) == stored
    assert len(task) == len(stored)
    assert all(name in task for name in stored)
    # Defaults are read, never stored: "in" says so, like keys() does.
    assert "stdout" not in task and "stdout" not in task.keys()
    assert task.exit_code is None and task["exit_code"] is None and task.get("exit_code") is None
    assert task.stdout == "" and task["stdout"] == "" and task.get("stdout") == ""  # a function's
    task.stdout = "out"
    assert "stdout" in task and "stdout" in task.keys() and len(task) == len(stored) + 1
    shallow = copy.copy(task)
    assert type(shallow) is ComputeTask and set(shallow) == set(task) and dict(shallow) == dict(task)
    assert type(task.copy()) is dict


def test_tasks_compare_by_identity_and_by_value_through_dicts() -> None:
    task = ComputeTask(function=workloads.add, args=(1, 2), uid="t")
    twin = copy.copy(task)
    # Identity equality keeps the hash contract (equal objects hash alike) for the sets and
    # dict keys tasks live in; value comparison is explicit.
    assert task != twin and task != dict(task) and dict(task) != task
    assert hash(task) != hash(twin) and len({task, twin}) == 2
    assert dict(task) == dict(twin)
    assert task.to_dict() == twin.to_dict()


def test_to_dict_from_dict_round_trips_a_function_task_through_json() -> None:
    task = ComputeTask(function=workloads.add, args=(1, 2), kwargs={"z": 3}, timeout=5.0,
                       retries=1, retry_exceptions=(ValueError,), backend="cpu",
                       task_backend_specific_kwargs={"resources": {"CPU": 1}})
    data = task.to_dict()
    assert data == {
        "kind": "function", "uid": task.uid, "backend": "cpu",
        "function": "rhapsody.testing.workloads:add", "args": [1, 2], "kwargs": {"z": 3},
        "timeout": 5.0, "retries": 1, "retry_exceptions": ["builtins:ValueError"],
        "task_backend_specific_kwargs": {"resources": {"CPU": 1}},
    }
    back = Task.from_dict(json.loads(json.dumps(data)))
    assert type(back) is ComputeTask and back is not task
    assert dict(back) == dict(task)
    assert back.function is workloads.add and back.args == (1, 2)
    assert back.retry_exceptions == (ValueError,)


def test_executable_and_ai_tasks_round_trip() -> None:
    exe = ComputeTask(executable="/bin/echo", arguments=["hi"], task_backend_specific_kwargs={"shell": True})
    assert ComputeTask.from_dict(json.loads(json.dumps(exe.to_dict()))).to_dict() == exe.to_dict()
    ai = AITask(["a", "b"], model="m", temperature=0.5, stop="\n")
    back = AITask.from_dict(json.loads(json.dumps(ai.to_dict())))
    assert type(back) is AITask and dict(back) == dict(ai) and back.kind == "ai"


async def test_results_are_left_out_unless_asked_for() -> None:
    ok = ComputeTask(function=workloads.add, args=(2, 3))
    bad = ComputeTask(executable="/bin/sh", arguments=["-c", "echo oops >&2; exit 3"])
    async with Session(backends=["concurrent"]) as session:
        await session.submit_tasks([ok, bad])
        await session.wait_tasks([ok, bad])
    assert "return_value" not in ok.to_dict() and "state" not in ok.to_dict()
    assert ok.to_dict(include_results=True)["return_value"] == 5
    full = json.loads(json.dumps(bad.to_dict(include_results=True)))
    assert (full["state"], full["exit_code"], full["stderr"]) == ("FAILED", 3, "oops\n")
    assert full["exception"].startswith("TaskExecutionError: ")
    again = Task.from_dict(full)
    # Results are kept, but the new task is NEW: it can be submitted again.
    assert again.state == "NEW" and again.exit_code == 3 and again.stderr == "oops\n"


def test_a_function_that_cannot_be_imported_by_name_is_refused_clearly() -> None:
    def local(x: int) -> int:
        return x

    for function in (lambda x: x, local):
        task = ComputeTask(function=function, uid="nested")
        with pytest.raises(TypeError, match=r"task nested: function .* cannot be written as data: "
                                            r"only a function or class defined at the top level"):
            task.to_dict()


def test_from_dict_refuses_bad_data_by_name() -> None:
    with pytest.raises(ValueError, match=r"from_dict: kind must be one of \['ai', 'executable', 'function'\], "
                                         r"got None"):
        Task.from_dict({"uid": "x"})
    with pytest.raises(ValueError, match=r"AITask.from_dict: the data is a 'function' task \(ComputeTask\)"):
        AITask.from_dict(ComputeTask(function=workloads.add).to_dict())
    with pytest.raises(TypeError, match=r"function must be a 'module:qualname' string, got 3"):
        Task.from_dict({"kind": "function", "function": 3})
    with pytest.raises(ModuleNotFoundError):
        Task.from_dict({"kind": "function", "function": "no_such_module_xyz:f"})
    with pytest.raises(ValueError, match=r"timeout must be a positive number"):
        Task.from_dict({"kind": "executable", "executable": "/bin/true", "timeout": -1})


def test_extra_fields_of_the_program_round_trip() -> None:
    task = ComputeTask(executable="/bin/true")
    task.note = "mine"
    back = Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert back.note == "mine" and dict(back) == dict(task)


# -- no task -> future -> task cycle ---------------------------------------------------------


async def test_an_ended_task_is_freed_without_the_cyclic_collector() -> None:
    gc.disable()
    try:
        async with Session(backends=["noop"]) as session:
            task = ComputeTask(function=workloads.add, args=(1, 2))
            [future] = await session.submit_tasks([task])
            assert task.future is future and future.result() is task
            assert await task is task
            await session.wait_tasks([task])
            uid = task.uid
            del task, future
            # Freed by reference counting alone (the collector is off): no tracked object left.
            left = [o for o in gc.get_objects() if isinstance(o, ComputeTask) and dict.get(o, "uid") == uid]
            assert not left, "an ended task and its future form a reference cycle"
    finally:
        gc.enable()


async def test_a_weakly_held_future_is_read_through_and_revived_when_gone() -> None:
    # What a session leaves in a DONE task: a weak reference to the future it resolved.
    async with Session(backends=["noop"]) as session:
        task = ComputeTask(function=workloads.add, args=(1, 2))
        [future] = await session.submit_tasks([task])
        await session.wait_tasks([task])
        object.__setattr__(task, "_future", _WeakRef(future))
        assert task.future is future and await task is task  # held by the program: that one
        del future
        gc.collect()
        revived = task.future
        assert revived is not None and revived.done() and revived.result() is task
        assert await task is task
        assert task.future is revived  # kept (weakly) while the program holds it
        with pytest.raises(ValueError, match=r"has already been submitted"):
            await session.submit_tasks([task])


async def test_future_and_await_keep_working_after_the_future_was_dropped() -> None:
    async with Session(backends=["concurrent"]) as session:
        ok = ComputeTask(function=workloads.add, args=(1, 2))
        bad = ComputeTask(executable="/bin/sh", arguments=["-c", "exit 4"])
        slow = ComputeTask(executable="/bin/sleep", arguments=["30"])
        await session.submit_tasks([ok, bad, slow])  # the futures are dropped at once
        await session.wait_tasks([ok, bad])
        assert await session.cancel_task(slow)
        gc.collect()
        assert ok.future is not None and ok.future.result() is ok
        assert (await ok) is ok
        with pytest.raises(TaskExecutionError) as caught:
            await bad
        assert caught.value.exit_code == 4
        assert slow.future is not None and slow.future.cancelled()
        with pytest.raises(asyncio.CancelledError):
            await slow
        await session.wait_tasks([ok, bad, slow])  # reads the futures again; never raises


async def test_failures_whose_futures_were_dropped_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    async with Session(backends=["concurrent"]) as session:
        bad = [ComputeTask(function=workloads.fail, args=(f"bad {i}",)) for i in range(3)]
        await session.submit_tasks(bad)  # the futures are dropped at once
        await session.wait_tasks(bad)
        gc.collect()
    assert [t.state for t in bad] == ["FAILED"] * 3
    assert "never retrieved" not in caplog.text
