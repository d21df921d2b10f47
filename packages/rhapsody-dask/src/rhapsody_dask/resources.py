"""Can any worker of a Dask cluster ever run a task with these resource restrictions?

Dask's scheduler keeps such a task in its ``no-worker`` state forever; rhapsody turns that into an
immediate failure that names the resource. The rule mirrors the scheduler's ``valid_workers``:
one worker must advertise, for every asked resource, a total quantity at least as large as asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any


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
            f"{wanted} ({len(offered)} worker(s) connected)"
        )
    return list(asked), (
        f"no single worker of the Dask cluster supplies all of {wanted} at once "
        f"({len(offered)} worker(s) connected)"
    )
