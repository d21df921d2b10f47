"""The Dask resources a task asks for, and whether any worker of the cluster can ever supply them.

A task asks either in Dask's own terms (``task_backend_specific_kwargs={"resources": {...}}``) or
portably (``ComputeTask(resources={...})``, :mod:`rhapsody.resources`), which
:func:`portable_resources` turns into the Dask resource names :data:`CPU`, :data:`GPU` and
:data:`MEMORY`.

Dask's scheduler keeps a task no worker can run in its ``no-worker`` state forever; rhapsody turns
that into an immediate failure that names the resource. The rule mirrors the scheduler's
``valid_workers``: one worker must advertise, for every asked resource, a total quantity at least
as large as asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any

from rhapsody.resources import resources_of

CPU = "CPU"
"""Dask resource a portable request's cores become: the task's cores over all ranks."""
GPU = "GPU"
"""Dask resource a portable request's GPUs become (fractions allowed): asked only when > 0."""
MEMORY = "MEMORY"
"""Dask resource a portable request's memory becomes, in MiB: asked only when given."""


def portable_resources(task: Mapping[str, Any]) -> dict[str, float] | None:
    """The Dask resources a task's ``resources=`` request becomes; ``None`` when it asked for none.

    Every task with a request asks for :data:`CPU` (its cores, 1 by default), so that a worker
    advertising ``CPU=n`` never runs tasks of more than ``n`` cores at once; :data:`GPU` and
    :data:`MEMORY` only when the task needs some.

    Raises:
        ValueError: ``ranks`` > 1 (Dask runs each task as one process and launches no MPI job;
            the message names the backends that can), or a bad request (see
            :func:`rhapsody.resources.resources_of`).
        TypeError: a bad request.
    """
    request = resources_of(task)
    if request is None:
        return None
    if request.ranks > 1:
        raise ValueError(
            f"task {task['uid']}: resources['ranks']={request.ranks} cannot run on Dask, which "
            "runs each task as one process in a worker and launches no MPI job (it offers "
            "ranks=1); run multi-rank tasks on the radical or dragon backend, or on concurrent "
            'with mpi_launcher="mpiexec"'
        )
    asked: dict[str, float] = {CPU: float(request.cores)}
    if request.gpus:
        asked[GPU] = float(request.gpus)
    if request.memory is not None:
        asked[MEMORY] = float(request.memory)
    return asked


def check_resources(uid: str, value: Any) -> dict[str, float]:
    """Validate a task's ``resources`` option and return it as a plain dict.

    Raises:
        TypeError: not a dict of resource names (str) to numbers.
        ValueError: a quantity is not positive.
    """
    if not isinstance(value, Mapping):
        raise TypeError(
            f"task {uid}: resources must be a dict such as {{'GPU': 1}}, got {type(value).__name__}"
        )
    checked: dict[str, float] = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"task {uid}: resources names must be non-empty strings, got {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, Real):
            raise TypeError(f"task {uid}: resources[{name!r}] must be a number, got {amount!r}")
        if not float(amount) > 0:
            raise ValueError(f"task {uid}: resources[{name!r}] must be > 0, got {amount!r}")
        checked[name] = float(amount)
    return checked


def why_unsatisfiable(
    asked: Mapping[str, float], workers: Iterable[Mapping[str, float]]
) -> tuple[list[str], str] | None:
    """Return ``(missing names, explanation)`` when no worker can run the task, else ``None``.

    ``workers`` holds each worker's advertised resources (``{}`` for a worker with none).
    """
    offered = [dict(w) for w in workers]
    for resources in offered:
        if all(resources.get(name, 0) >= amount for name, amount in asked.items()):
            return None
    missing = [
        name for name, amount in asked.items()
        if not any(w.get(name, 0) >= amount for w in offered)
    ]
    wanted = ", ".join(f"{name}={amount:g}" for name, amount in asked.items())
    if not offered:
        return list(asked), f"asks for resources {wanted} but the Dask cluster has no workers"
    if missing:
        best = {name: max((w.get(name, 0) for w in offered), default=0) for name in missing}
        nowhere = (
            "no worker advertises any resources" if not any(any(w.values()) for w in offered)
            else "no worker advertises it"
        )
        have = ", ".join(
            f"{name} (most on one worker: {best[name]:g})" if best[name] else f"{name} ({nowhere})"
            for name in missing
        )
        return missing, (
            f"no worker of the Dask cluster can supply resource {have}; the task asks for "
            f"{wanted} ({len(offered)} worker(s) connected){_advertise_hint(missing)}"
        )
    return list(asked), (
        f"no single worker of the Dask cluster supplies all of {wanted} at once "
        f"({len(offered)} worker(s) connected)"
    )


def _advertise_hint(missing: list[str]) -> str:
    # A portable request names no Dask resource itself: say where CPU/GPU/MEMORY came from and how
    # workers offer them, since a cluster started without --resources advertises none.
    portable = [name for name in (CPU, GPU, MEMORY) if name in missing]
    if not portable:
        return ""
    return (
        f". ComputeTask(resources=...) asks Dask for {', '.join(portable)} (CPU: cores, GPU, "
        'MEMORY: MiB); workers offer them with dask worker --resources "CPU=8 GPU=2 '
        'MEMORY=65536" or DaskBackend(worker_resources={...})'
    )
