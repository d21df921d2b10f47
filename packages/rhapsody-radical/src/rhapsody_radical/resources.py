"""A task's portable ``resources=`` request as RADICAL-Pilot ``TaskDescription`` fields.

Executables get ``ranks``, ``cores_per_rank``, ``gpus_per_rank`` and ``mem_per_rank`` (see
:func:`description_fields`); whether they fit the pilot is then checked like any description, by
:class:`rhapsody_radical.pilot.PilotSize`. Function tasks run one call per core inside a Raptor
worker, which places nothing more: :func:`check_function_request` refuses a request beyond that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rhapsody.resources import resources_of

# Each TaskDescription field a portable request sets, with RP's deprecated spelling of the same
# field: a task_backend_specific_kwargs key of either name wins over the portable value.
_SAME_FIELD = {
    "ranks": ("ranks", "cpu_processes"),
    "cores_per_rank": ("cores_per_rank", "cpu_threads"),
    "gpus_per_rank": ("gpus_per_rank", "gpu_processes"),
    "mem_per_rank": ("mem_per_rank", "mem_per_process"),
    "gpu_type": ("gpu_type", "gpu_thread_type"),
}
# RP exports CUDA_VISIBLE_DEVICES (each rank's own GPUs) only for tasks of this gpu_type.
_GPU_TYPE = "CUDA"


def description_fields(task: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The TaskDescription fields of the task's ``resources=`` request ({} when it has none),
    less those that ``given`` (the task's ``task_backend_specific_kwargs``) sets itself.

    ``memory_per_rank`` (MiB) becomes ``mem_per_rank``, which RP compares with the pilot's
    ``mem_per_node`` from its resource configuration (MB there). A task asking for GPUs also gets
    ``gpu_type="CUDA"``, for which RP sets ``CUDA_VISIBLE_DEVICES`` to the GPUs of each rank.

    Raises:
        TypeError, ValueError: a bad request (see :func:`rhapsody.resources.resources_of`).
    """
    request = resources_of(task)
    if request is None:
        return {}
    fields: dict[str, Any] = {
        "ranks": request.ranks,
        "cores_per_rank": request.cores_per_rank,
        "gpus_per_rank": request.gpus_per_rank,
    }
    if request.memory_per_rank is not None:
        fields["mem_per_rank"] = request.memory_per_rank
    if request.gpus_per_rank:
        fields["gpu_type"] = _GPU_TYPE
    return {
        name: value for name, value in fields.items()
        if not any(spelling in given for spelling in _SAME_FIELD[name])
    }


def check_function_request(task: Mapping[str, Any], worker_cores: int) -> None:
    """Refuse a function task whose ``resources=`` asks for more than one core of its worker.

    Raises:
        ValueError: ranks, cores, GPUs or memory beyond what a Raptor call gets (the message names
            the key and what the backend offers), or a bad request.
        TypeError: a bad request.
    """
    request = resources_of(task)
    if request is None:
        return
    asked = {"ranks": request.ranks, "cores_per_rank": request.cores_per_rank,
             "gpus_per_rank": request.gpus_per_rank, "memory_per_rank": request.memory_per_rank}
    offered = {"ranks": 1, "cores_per_rank": 1, "gpus_per_rank": 0, "memory_per_rank": None}
    beyond = [key for key, value in asked.items() if value != offered[key]]
    if beyond:
        key = beyond[0]
        raise ValueError(
            f"task {task['uid']}: resources[{key!r}]={asked[key]!r} cannot be given to a function "
            "task on the radical backend: each function call runs in a Raptor worker "
            f"({worker_cores} core(s) each) on one core, with no GPU and no memory of its own "
            "(it offers ranks=1, cores_per_rank=1, gpus_per_rank=0, memory_per_rank=None). Run "
            "the work as an executable task, which gets ranks, cores, GPUs and memory from the pilot"
        )
