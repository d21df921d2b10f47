"""ComputeTask and AITask: construction rules, error messages, dict/attribute access, uids, pickling."""

from __future__ import annotations

import copy
import json
import pickle
import re
import threading

import cloudpickle
import pytest

from rhapsody import AITask, ComputeTask, TaskState
from rhapsody.testing import workloads

# -- ComputeTask: function xor executable ----------------------------------------------------


def test_function_task_fields_and_kind() -> None:
    task = ComputeTask(function=workloads.add, args=[1, 2], kwargs={"x": 1})
    assert task.kind == "function"
    assert task.state == TaskState.NEW == "NEW"
    assert task.args == (1, 2)
    assert task.kwargs == {"x": 1}
    assert task.arguments == ()  # executables only; an immutable empty tuple for functions
    assert task.task_backend_specific_kwargs == {}
    # A function's output is never captured: "" (RHAPSODY's contract), not None.
    assert (task.return_value, task.exception, task.stdout, task.stderr, task.exit_code) == (
        None, None, "", "", None)
    assert task.future is None
    assert not task.done


def test_function_may_be_positional() -> None:
    assert ComputeTask(workloads.square).function is workloads.square


def test_executable_task_fields_and_kind() -> None:
    task = ComputeTask(executable="/bin/echo", arguments=("a", "b"),
                       task_backend_specific_kwargs={"cwd": "/tmp"})
    assert task.kind == "executable"
    assert task.arguments == ["a", "b"]
    assert task.function is None
    assert task.task_backend_specific_kwargs == {"cwd": "/tmp"}


def test_neither_function_nor_executable() -> None:
    with pytest.raises(ValueError, match=r"needs a function= or an executable="):
        ComputeTask()


def test_both_function_and_executable() -> None:
    with pytest.raises(ValueError, match=r"function= or an executable=, not both"):
        ComputeTask(function=workloads.add, executable="/bin/true")


@pytest.mark.parametrize("bad", ["", 42, ["/bin/echo"]])
def test_executable_must_be_non_empty_string(bad: object) -> None:
    with pytest.raises(TypeError, match=r"executable must be a non-empty string, got"):
        ComputeTask(executable=bad)  # type: ignore[arg-type]


def test_function_must_be_callable() -> None:
    with pytest.raises(TypeError, match=r"function must be callable, got 'print'"):
        ComputeTask(function="print")  # type: ignore[arg-type]


def test_args_for_executable_rejected() -> None:
    with pytest.raises(ValueError, match=r"args/kwargs are for functions; pass command-line arguments"):
        ComputeTask(executable="/bin/echo", args=("x",))
    with pytest.raises(ValueError, match=r"args/kwargs are for functions"):
        ComputeTask(executable="/bin/echo", kwargs={"x": 1})


def test_arguments_for_function_rejected() -> None:
    with pytest.raises(ValueError, match=r"arguments=\[...\] is for executables"):
        ComputeTask(function=workloads.add, arguments=["1"])


def test_arguments_must_be_strings() -> None:
    with pytest.raises(TypeError, match=r"arguments must be strings, got 3 \(int\)"):
        ComputeTask(executable="/bin/echo", arguments=["a", 3])  # type: ignore[list-item]


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "5", True])
def test_timeout_must_be_positive_finite_number(bad: object) -> None:
    with pytest.raises(ValueError, match=r"timeout must be a positive number of seconds, got"):
        ComputeTask(function=workloads.add, timeout=bad)  # type: ignore[arg-type]


def test_timeout_accepts_int_and_float() -> None:
    assert ComputeTask(function=workloads.add, timeout=2).timeout == 2
    assert ComputeTask(executable="/bin/true", timeout=0.5).timeout == 0.5


def test_backend_kwargs_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match=r"ComputeTask: task_backend_specific_kwargs must be a dict, not list"):
        ComputeTask(executable="/bin/true", task_backend_specific_kwargs=[("cwd", "/")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"AITask: task_backend_specific_kwargs must be a dict, not str"):
        AITask("hi", task_backend_specific_kwargs="x")  # type: ignore[arg-type]


def test_backend_kwargs_are_copied() -> None:
    given = {"env": {"A": "1"}}
    task = ComputeTask(executable="/bin/true", task_backend_specific_kwargs=given)
    given["cwd"] = "/elsewhere"
    assert task.task_backend_specific_kwargs == {"env": {"A": "1"}}


# -- parameters removed since 0.2 ------------------------------------------------------------


@pytest.mark.parametrize(("name", "hint"), [
    ("gpu", r'Pass resources=\{"gpus_per_rank": n\}'),
    ("ranks", r'Pass resources=\{"ranks": n\}'),
    ("memory", r'Pass resources=\{"memory_per_rank": mib\}'),
    ("cpu_threads", r'Pass resources=\{"cores_per_rank": n\}'),
    ("environment", r'Pass task_backend_specific_kwargs=\{"env": \{...\}\}'),
    ("env", r'Pass task_backend_specific_kwargs=\{"env": \{...\}\}'),
    ("cwd", r'Pass task_backend_specific_kwargs=\{"cwd": "/path"\}'),
    ("working_directory", r'Pass task_backend_specific_kwargs=\{"cwd": "/path"\}'),
    ("shell", r'Pass task_backend_specific_kwargs=\{"shell": True\}'),
])
def test_removed_parameters_say_what_to_pass(name: str, hint: str) -> None:
    with pytest.raises(TypeError, match=rf"ComputeTask\(\) no longer takes {name}=: no backend ever honoured it\. {hint}"):
        ComputeTask(executable="/bin/true", **{name: 1})
    with pytest.raises(TypeError, match=rf"AITask\(\) no longer takes {name}=.*{hint}"):
        AITask("hello", **{name: 1})


def test_unknown_keyword_is_a_plain_type_error() -> None:
    with pytest.raises(TypeError, match=r"ComputeTask\(\) got an unexpected keyword argument 'colour'"):
        ComputeTask(function=workloads.add, colour="red")
    with pytest.raises(TypeError, match=r"AITask\(\) got an unexpected keyword argument 'temprature'"):
        AITask("hi", temprature=0.5)


# -- AITask ----------------------------------------------------------------------------------


def test_ai_task_fields() -> None:
    task = AITask(["a", "b"], model="m", system_prompt="be brief", temperature=0, max_tokens=5,
                  top_p=1, top_k=-1, stop=["\n"], inference_endpoint="http://localhost:1/v1")
    assert task.kind == "ai"
    assert task.prompt == ["a", "b"]
    assert (task.temperature, task.max_tokens, task.top_p, task.top_k, task.stop) == (0, 5, 1, -1, ["\n"])
    assert (task.response, task.finish_reason, task.usage, task.return_value) == (None, None, None, None)
    assert task.state == "NEW"


@pytest.mark.parametrize("prompt", ["", "   ", ["ok", ""], ["\n"]])
def test_empty_prompt(prompt: object) -> None:
    with pytest.raises(ValueError, match=r"AITask: prompt must not be empty"):
        AITask(prompt)  # type: ignore[arg-type]


def test_empty_prompt_list() -> None:
    with pytest.raises(ValueError, match=r"AITask: prompt must be a non-empty string or a non-empty list"):
        AITask([])


@pytest.mark.parametrize("prompt", [42, None, ("a", "b")])
def test_prompt_of_wrong_type(prompt: object) -> None:
    with pytest.raises(TypeError, match=r"AITask: prompt must be a string or a list of strings, got"):
        AITask(prompt)  # type: ignore[arg-type]


def test_prompt_items_must_be_strings() -> None:
    with pytest.raises(TypeError, match=r"AITask: prompts must be strings, got 3"):
        AITask(["a", 3])  # type: ignore[list-item]


@pytest.mark.parametrize("value", [-0.1, 2.01, 100])
def test_temperature_out_of_range(value: float) -> None:
    with pytest.raises(ValueError, match=rf"AITask: temperature must be in \[0.0, 2.0\], got {value!r}"):
        AITask("hi", temperature=value)


@pytest.mark.parametrize("value", ["0.5", True, float("nan"), float("inf")])
def test_temperature_of_wrong_type(value: object) -> None:
    with pytest.raises(TypeError, match=r"AITask: temperature must be a number, got"):
        AITask("hi", temperature=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0.0, 2.0, 1])
def test_temperature_bounds_are_inclusive(value: float) -> None:
    assert AITask("hi", temperature=value).temperature == value


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.5])
def test_top_p_out_of_range(value: float) -> None:
    with pytest.raises(ValueError, match=rf"AITask: top_p must be in \(0.0, 1.0\], got {value!r}"):
        AITask("hi", top_p=value)


def test_top_p_of_wrong_type() -> None:
    with pytest.raises(TypeError, match=r"AITask: top_p must be a number, got '1'"):
        AITask("hi", top_p="1")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -2])
def test_top_k_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match=rf"AITask: top_k must be an integer >= 1 \(or -1 for all\), got {value}"):
        AITask("hi", top_k=value)


@pytest.mark.parametrize("value", [1.5, "3", True])
def test_top_k_of_wrong_type(value: object) -> None:
    with pytest.raises(TypeError, match=r"AITask: top_k must be an integer, got"):
        AITask("hi", top_k=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1])
def test_max_tokens_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match=rf"AITask: max_tokens must be an integer >= 1, got {value}"):
        AITask("hi", max_tokens=value)


@pytest.mark.parametrize("value", [2.0, "8", False])
def test_max_tokens_of_wrong_type(value: object) -> None:
    with pytest.raises(TypeError, match=r"AITask: max_tokens must be an integer, got"):
        AITask("hi", max_tokens=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("stop", ["", [""], ["ok", 3], 7, ("a",)])
def test_stop_must_be_non_empty_strings(stop: object) -> None:
    with pytest.raises(TypeError, match=r"AITask: stop must be a non-empty string or list of them, got"):
        AITask("hi", stop=stop)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["model", "system_prompt", "inference_endpoint"])
def test_string_fields_must_be_strings(field: str) -> None:
    with pytest.raises(TypeError, match=rf"AITask: {field} must be a string, got 5"):
        AITask("hi", **{field: 5})


# -- dict and attribute access ---------------------------------------------------------------


def test_dict_and_attribute_access_are_one_value() -> None:
    task = ComputeTask(function=workloads.add)
    task.note = "via attribute"
    assert task["note"] == "via attribute"
    task["other"] = 3
    assert task.other == 3
    task.state = "DONE"
    assert task["state"] == "DONE"
    assert task.done
    del task.note
    assert "note" not in task
    with pytest.raises(AttributeError, match=r"ComputeTask has no field 'missing'"):
        _ = task.missing
    with pytest.raises(AttributeError, match=r"note"):
        del task.note


def test_unset_fields_read_as_their_defaults_and_are_not_stored() -> None:
    task = ComputeTask(function=workloads.add)
    assert set(task) == {"uid", "backend", "state", "function"}
    for name, default in [("args", ()), ("kwargs", {}), ("arguments", ()), ("timeout", None),
                          ("executable", None), ("stdout", ""), ("exit_code", None),
                          ("task_backend_specific_kwargs", {})]:
        assert task[name] == default and getattr(task, name) == default
        assert task.get(name, "other") == default  # a field's default, not get()'s
        assert name not in task and name not in task.keys()  # in: stored fields only
    assert task.get("no_such_field", 7) == 7 and "no_such_field" not in task
    with pytest.raises(KeyError):
        _ = task["no_such_field"]
    task.stdout = "out"
    assert task.get("stdout") == "out" and "stdout" in set(task)
    executable = ComputeTask(executable="/bin/echo", arguments=["hi"])
    assert set(executable) == {"uid", "backend", "state", "executable", "arguments"}
    assert executable.function is None and executable.kind == "executable"
    ai = AITask("hi", temperature=0.5)
    assert set(ai) == {"uid", "backend", "state", "prompt", "temperature"}
    assert ai.model is None and ai.response is None and ai.top_k is None


def test_the_shared_empty_mapping_refuses_changes_and_says_what_to_do() -> None:
    task = ComputeTask(function=workloads.add)
    other = ComputeTask(function=workloads.add)
    with pytest.raises(TypeError, match=r"assign one instead, e\.g\. task\.task_backend_specific_kwargs"):
        task.task_backend_specific_kwargs["cwd"] = "/tmp"
    with pytest.raises(TypeError, match=r"holds no mapping of its own"):
        task.kwargs.update(a=1)
    assert other.kwargs == {} and other.task_backend_specific_kwargs == {}
    task.kwargs = {"a": 1}
    task.kwargs["b"] = 2  # a mapping of the task's own changes freely
    assert task.kwargs == {"a": 1, "b": 2} and other.kwargs == {}
    copied = pickle.loads(pickle.dumps(other.task_backend_specific_kwargs))
    assert type(copied) is dict and copied == {}
    copied["cwd"] = "/tmp"
    assert type(copy.copy(other.kwargs)) is dict
    assert json.loads(json.dumps({"kwargs": other.kwargs})) == {"kwargs": {}}


def test_given_mappings_are_copied_into_the_task() -> None:
    kwargs, options = {"a": 1}, {"cwd": "/tmp"}
    task = ComputeTask(function=workloads.add, kwargs=kwargs, task_backend_specific_kwargs=options)
    kwargs["a"], options["cwd"] = 2, "/elsewhere"
    assert task.kwargs == {"a": 1} and task.task_backend_specific_kwargs == {"cwd": "/tmp"}


def test_tasks_hash_and_compare_by_identity() -> None:
    a = ComputeTask(function=workloads.add, uid="same")
    b = ComputeTask(function=workloads.add, uid="same")
    assert a != b
    assert a == a
    assert len({a, b}) == 2
    hash_before = hash(a)
    a.state = "RUNNING"
    assert hash(a) == hash_before
    assert "uid='same'" in repr(a) and "kind='function'" in repr(a)


def test_executable_task_serialises_to_json() -> None:
    task = ComputeTask(executable="/bin/echo", arguments=["hi"], uid="u1")
    decoded = json.loads(json.dumps(task))
    assert decoded["uid"] == "u1"
    assert decoded["arguments"] == ["hi"]
    assert decoded["state"] == "NEW"


# -- uids ------------------------------------------------------------------------------------


def test_given_uid_is_kept() -> None:
    assert ComputeTask(function=workloads.add, uid="mine").uid == "mine"
    assert AITask("hi", uid="ai-1").uid == "ai-1"


def test_uids_are_unique_across_threads() -> None:
    per_thread, threads = 2000, 8
    results: list[list[str]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def make(slot: list[str]) -> None:
        start.wait()
        for i in range(per_thread):
            task = ComputeTask(function=workloads.add) if i % 2 else AITask("hi")
            slot.append(task.uid)

    workers = [threading.Thread(target=make, args=(slot,)) for slot in results]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    uids = [uid for slot in results for uid in slot]
    assert len(uids) == per_thread * threads
    assert len(set(uids)) == len(uids)


# -- pickling --------------------------------------------------------------------------------


async def _submitted_task() -> ComputeTask:
    import rhapsody

    task = ComputeTask(function=workloads.add, args=(1, 2), uid="pickled")
    async with rhapsody.Session(backends=["noop"]) as session:
        await session.submit_tasks([task])
        await session.wait_tasks([task])
    return task


async def test_pickle_round_trip_drops_the_future() -> None:
    task = await _submitted_task()
    assert task.future is not None
    copy_ = pickle.loads(pickle.dumps(task))
    assert type(copy_) is ComputeTask
    assert dict(copy_) == dict(task)
    assert copy_.future is None
    with pytest.raises(RuntimeError, match=r"task pickled has not been submitted to a session"):
        await copy_


def test_cloudpickle_round_trip_with_a_lambda() -> None:
    offset = 10
    task = ComputeTask(function=lambda x: x + offset, args=(5,))
    object.__setattr__(task, "_future", object())  # as if submitted
    copy_ = cloudpickle.loads(cloudpickle.dumps(task))
    assert copy_.future is None
    assert copy_.function(*copy_.args) == 15
    assert copy_.uid == task.uid


def test_ai_task_pickles() -> None:
    task = AITask(["a", "b"], temperature=0.3)
    copy_ = pickle.loads(pickle.dumps(task))
    assert type(copy_) is AITask and copy_.kind == "ai"
    assert dict(copy_) == dict(task)


def test_copy_and_deepcopy_drop_the_future() -> None:
    task = ComputeTask(function=workloads.add, kwargs={"a": [1]})
    object.__setattr__(task, "_future", object())
    shallow, deep = copy.copy(task), copy.deepcopy(task)
    assert shallow.future is None and deep.future is None
    assert shallow.kwargs is task.kwargs
    assert deep.kwargs == task.kwargs and deep.kwargs is not task.kwargs


async def test_await_before_submit_raises() -> None:
    task = ComputeTask(function=workloads.add, uid="never-submitted")
    with pytest.raises(RuntimeError, match=r"task never-submitted has not been submitted to a session"):
        await task


# -- footguns: strings where sequences belong, names that are not strings --------------------


def test_arguments_as_one_string_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"ComputeTask: arguments must be a list of strings, not a string; "
                                        r"write arguments=\['-la'\]"):
        ComputeTask(executable="/bin/ls", arguments="-la")  # type: ignore[arg-type]


@pytest.mark.parametrize("args", ["abc", b"abc"])
def test_args_as_one_string_is_rejected(args: object) -> None:
    with pytest.raises(TypeError, match=rf"ComputeTask: args must be a tuple of arguments, not "
                                        rf"{type(args).__name__}; write args=\({args!r},\)"):
        ComputeTask(function=len, args=args)  # type: ignore[arg-type]


def test_args_may_be_any_iterable() -> None:
    assert ComputeTask(function=max, args=[3, 1]).args == (3, 1)
    assert ComputeTask(function=max, args=iter((3, 1))).args == (3, 1)


def test_kwargs_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match=r"ComputeTask: kwargs must be a dict, got \[\('a', 1\)\]"):
        ComputeTask(function=dict, kwargs=[("a", 1)])  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value"), [("uid", 5), ("uid", ""), ("backend", ["dask"]), ("backend", "")])
def test_uid_and_backend_must_be_non_empty_strings(field: str, value: object) -> None:
    shown = re.escape(repr(value))
    with pytest.raises(TypeError, match=rf"ComputeTask: {field} must be a non-empty string, got {shown}"):
        ComputeTask(function=len, **{field: value})
    with pytest.raises(TypeError, match=rf"AITask: {field} must be a non-empty string, got {shown}"):
        AITask("hi", **{field: value})
