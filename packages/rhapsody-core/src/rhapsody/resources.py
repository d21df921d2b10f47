"""Portable resource requests: what a task needs, said once for every backend.

A :class:`~rhapsody.ComputeTask` asks for resources with a plain mapping::

    ComputeTask(executable="./sim", resources={"ranks": 4, "cores_per_rank": 2,
                                               "gpus_per_rank": 1, "memory_per_rank": 2048})

Every key is optional and reads as its default when left out:

==================  =======  ================================================================
key                 default  meaning
==================  =======  ================================================================
``ranks``           1        processes (MPI ranks) the task runs as; an integer >= 1
``cores_per_rank``  1        CPU cores each rank needs; an integer >= 1
``gpus_per_rank``   0        GPUs each rank needs: a whole number >= 0, or a fraction in
                             (0, 1) for ranks that share a GPU
``memory_per_rank`` None     MiB of memory each rank needs (an integer >= 1); None: no limit
==================  =======  ================================================================

The task keeps the request as the plain dict it was given (after checking it), so it travels
through ``to_dict``/``from_dict``, JSON and YAML. Backends read it with :func:`resources_of`,
in ``check_tasks``, and either honour each key or refuse the task there with a ValueError that
names the key and what the engine can offer. No backend ignores a key.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RESOURCE_KEYS: tuple[str, ...] = ("ranks", "cores_per_rank", "gpus_per_rank", "memory_per_rank")
"""The keys a ``resources=`` request may hold."""


@dataclass(frozen=True)
class Resources:
    """A checked resource request, with every key at its value or its default.

    Make one with :meth:`from_request` (backends: :func:`resources_of`); the totals over all
    ranks are :attr:`cores`, :attr:`gpus` and :attr:`memory`.
    """

    ranks: int = 1
    cores_per_rank: int = 1
    gpus_per_rank: float = 0
    memory_per_rank: int | None = None

    @classmethod
    def from_request(cls, request: Mapping[str, Any], *, uid: str) -> Resources:
        """Check a ``resources=`` mapping and make it a :class:`Resources`.

        A whole-number ``gpus_per_rank`` given as a float (``2.0``) becomes an ``int``.

        Raises:
            TypeError: ``request`` is not a mapping, or a value has the wrong type (the message
                names the task ``uid`` and the key).
            ValueError: an unknown key (the message names it and the valid keys), or a value
                out of range.
        """
        if not isinstance(request, Mapping):
            raise TypeError(
                f"task {uid}: resources must be a dict with keys {', '.join(RESOURCE_KEYS)}; "
                f"got {type(request).__name__} {request!r}"
            )
        for key in request:
            if key not in RESOURCE_KEYS:
                hint = _hint(key)
                raise ValueError(
                    f"task {uid}: unknown resources key {key!r}{hint}; the valid keys are "
                    f"{', '.join(RESOURCE_KEYS)}"
                )
        ranks = _whole(uid, "ranks", request.get("ranks", 1), low=1)
        cores = _whole(uid, "cores_per_rank", request.get("cores_per_rank", 1), low=1)
        gpus = _gpus(uid, request.get("gpus_per_rank", 0))
        memory = request.get("memory_per_rank")
        if memory is not None:
            memory = _whole(uid, "memory_per_rank", memory, low=1, unit=" (MiB)")
        return cls(ranks=ranks, cores_per_rank=cores, gpus_per_rank=gpus, memory_per_rank=memory)

    @property
    def cores(self) -> int:
        """CPU cores over all ranks."""
        return self.ranks * self.cores_per_rank

    @property
    def gpus(self) -> float:
        """GPUs over all ranks (not a whole number when ranks ask for fractions)."""
        return self.ranks * self.gpus_per_rank

    @property
    def memory(self) -> int | None:
        """MiB over all ranks; None when no memory was asked for."""
        return None if self.memory_per_rank is None else self.ranks * self.memory_per_rank

    @property
    def fractional_gpus(self) -> bool:
        """Whether each rank asks for part of one GPU (``0 < gpus_per_rank < 1``)."""
        return 0 < self.gpus_per_rank < 1


def resources_of(task: Mapping[str, Any]) -> Resources | None:
    """The task's resource request, checked; None when the task asked for nothing.

    Backends call it in ``check_tasks``.

    Raises:
        TypeError, ValueError: as :meth:`Resources.from_request` (a task edited by hand after
            construction can hold a bad request).
    """
    request = task.get("resources")
    if not request:
        return None
    return Resources.from_request(request, uid=str(task.get("uid")))


def check_request(owner: str, request: Any, *, uid: str) -> dict[str, Any] | None:
    """The request a task stores: a plain copy of ``request`` once checked; None for an empty one.

    Raises:
        TypeError, ValueError: as :meth:`Resources.from_request`, the message prefixed with
            ``owner`` (e.g. ``"ComputeTask"``).
    """
    if request is None:
        return None
    try:
        resources = Resources.from_request(request, uid=uid)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{owner}: {exc}") from None
    if not request:
        return None
    stored = dict(request)
    if "gpus_per_rank" in stored:
        stored["gpus_per_rank"] = resources.gpus_per_rank
    return stored


# Names other systems use for the same things (Dask's GPU/CPU/MEMORY, Slurm's ntasks, ...).
_ALIASES = {"gpu": "gpus_per_rank", "gpus": "gpus_per_rank", "cpu": "cores_per_rank",
            "cpus": "cores_per_rank", "cores": "cores_per_rank", "cpu_threads": "cores_per_rank",
            "threads": "cores_per_rank", "memory": "memory_per_rank", "mem": "memory_per_rank",
            "mem_per_rank": "memory_per_rank", "nranks": "ranks", "ntasks": "ranks",
            "np": "ranks", "processes": "ranks"}


def _hint(key: Any) -> str:
    name = str(key).lower()
    close = _ALIASES.get(name) or next(iter(difflib.get_close_matches(name, RESOURCE_KEYS, n=1)), None)
    return f" (did you mean {close!r}?)" if close else ""


def _whole(uid: str, key: str, value: Any, *, low: int, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"task {uid}: resources[{key!r}] must be an integer{unit}, got "
            f"{type(value).__name__} {value!r}"
        )
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise ValueError(f"task {uid}: resources[{key!r}] must be a whole number{unit}, got {value!r}")
        value = int(value)
    if value < low:
        raise ValueError(f"task {uid}: resources[{key!r}] must be >= {low}{unit}, got {value!r}")
    return value


def _gpus(uid: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"task {uid}: resources['gpus_per_rank'] must be a number, got "
            f"{type(value).__name__} {value!r}"
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"task {uid}: resources['gpus_per_rank'] must be >= 0, got {value!r}")
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        if value > 1:
            raise ValueError(
                f"task {uid}: resources['gpus_per_rank'] must be a whole number, or a fraction "
                f"in (0, 1) for ranks that share one GPU; got {value!r}"
            )
    return value
