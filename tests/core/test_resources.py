"""The portable resource request: ComputeTask(resources=...), Resources and resources_of."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rhapsody import ComputeTask, Resources, Task
from rhapsody.resources import RESOURCE_KEYS, resources_of


def test_no_request_is_none_and_stores_nothing() -> None:
    task = ComputeTask(executable="/bin/true")
    assert task.resources is None
    assert "resources" not in task
    assert resources_of(task) is None
    empty = ComputeTask(executable="/bin/true", resources={})
    assert "resources" not in empty
    assert resources_of(empty) is None


def test_defaults_fill_every_key_left_out() -> None:
    task = ComputeTask(executable="/bin/true", uid="t", resources={"gpus_per_rank": 2})
    assert task.resources == {"gpus_per_rank": 2}
    assert resources_of(task) == Resources(ranks=1, cores_per_rank=1, gpus_per_rank=2,
                                           memory_per_rank=None)


def test_totals_over_ranks() -> None:
    res = Resources.from_request({"ranks": 4, "cores_per_rank": 2, "gpus_per_rank": 0.5,
                                  "memory_per_rank": 100}, uid="t")
    assert (res.cores, res.gpus, res.memory) == (8, 2.0, 400)
    assert res.fractional_gpus
    assert Resources().memory is None
    assert not Resources(gpus_per_rank=1).fractional_gpus


def test_whole_float_gpus_become_int_and_the_request_is_a_plain_copy() -> None:
    given: dict[str, Any] = {"gpus_per_rank": 2.0, "ranks": 2}
    task = ComputeTask(executable="/bin/true", resources=given)
    given["ranks"] = 99
    assert task.resources == {"gpus_per_rank": 2, "ranks": 2}
    assert type(task.resources["gpus_per_rank"]) is int
    assert type(task.resources) is dict


def test_round_trip_through_json() -> None:
    task = ComputeTask(executable="/bin/echo", arguments=["x"], uid="rt",
                       resources={"ranks": 2, "cores_per_rank": 3, "gpus_per_rank": 0.25,
                                  "memory_per_rank": 512})
    data = json.loads(json.dumps(task.to_dict()))
    assert data["resources"] == {"ranks": 2, "cores_per_rank": 3, "gpus_per_rank": 0.25,
                                 "memory_per_rank": 512}
    back = Task.from_dict(data)
    assert back.resources == task.resources
    assert resources_of(back) == resources_of(task)


def test_from_dict_checks_the_request_as_the_constructor_does() -> None:
    with pytest.raises(ValueError, match="unknown resources key 'gpus'"):
        Task.from_dict({"kind": "executable", "executable": "/bin/true", "uid": "y",
                        "resources": {"gpus": 1}})


def test_unknown_key_names_the_key_and_the_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        ComputeTask(executable="/bin/true", uid="u1", resources={"GPU": 1})
    message = str(info.value)
    assert "ComputeTask: task u1: unknown resources key 'GPU'" in message
    assert "did you mean 'gpus_per_rank'?" in message
    for key in RESOURCE_KEYS:
        assert key in message


@pytest.mark.parametrize(("request_", "error", "pattern"), [
    ({"ranks": 0}, ValueError, r"task u2: resources\['ranks'\] must be >= 1, got 0"),
    ({"ranks": "2"}, TypeError, r"task u2: resources\['ranks'\] must be an integer, got str '2'"),
    ({"ranks": True}, TypeError, r"resources\['ranks'\] must be an integer, got bool"),
    ({"cores_per_rank": 1.5}, ValueError, r"resources\['cores_per_rank'\] must be a whole number"),
    ({"cores_per_rank": 0}, ValueError, r"resources\['cores_per_rank'\] must be >= 1"),
    ({"gpus_per_rank": -1}, ValueError, r"resources\['gpus_per_rank'\] must be >= 0, got -1"),
    ({"gpus_per_rank": 1.5}, ValueError, r"a fraction in \(0, 1\) for ranks that share one GPU"),
    ({"gpus_per_rank": float("nan")}, ValueError, r"resources\['gpus_per_rank'\] must be >= 0"),
    ({"gpus_per_rank": "1"}, TypeError, r"resources\['gpus_per_rank'\] must be a number"),
    ({"memory_per_rank": 0}, ValueError, r"resources\['memory_per_rank'\] must be >= 1 \(MiB\)"),
    ({"memory_per_rank": "4G"}, TypeError, r"memory_per_rank'\] must be an integer \(MiB\)"),
    (["ranks"], TypeError, r"task u2: resources must be a dict"),
])
def test_bad_values_name_the_task_and_the_key(request_: Any, error: type[Exception],
                                              pattern: str) -> None:
    with pytest.raises(error, match=rf"^ComputeTask: {pattern}" if "task u2" in pattern else pattern):
        ComputeTask(executable="/bin/true", uid="u2", resources=request_)


def test_generated_uid_is_named_too() -> None:
    with pytest.raises(ValueError, match=r"ComputeTask: task task\.\d+\.\d+: resources\['ranks'\]"):
        ComputeTask(function=print, resources={"ranks": -3})


def test_resources_of_checks_a_request_edited_by_hand() -> None:
    task = ComputeTask(executable="/bin/true", uid="edited")
    task.resources = {"cores": 2}
    with pytest.raises(ValueError, match="task edited: unknown resources key 'cores'"):
        resources_of(task)


def test_resources_is_frozen() -> None:
    res = Resources(ranks=2)
    with pytest.raises(AttributeError):
        res.ranks = 3  # type: ignore[misc]
