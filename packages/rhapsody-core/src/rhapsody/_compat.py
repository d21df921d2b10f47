"""The few private attributes of other libraries that rhapsody reads, each in one place.

Python's ``concurrent.futures`` pools have no public accessor for their size or settings. Each read
here falls back (or says plainly what it cannot do) when a Python release renames the attribute,
and ``tests/core/test_compat.py`` fails loudly on the release that does.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any


def executor_workers(executor: Executor) -> int:
    """How many workers a thread or process pool runs (the CPU count when it does not say)."""
    workers = getattr(executor, "_max_workers", None)
    return workers if isinstance(workers, int) and workers > 0 else os.cpu_count() or 1


def process_pool_settings(executor: ProcessPoolExecutor) -> dict[str, Any]:
    """The arguments that build a new pool like ``executor``.

    Raises:
        AttributeError: this Python's pool does not keep one of them (the message names it).
    """
    settings: dict[str, Any] = {}
    for argument in ("max_workers", "mp_context", "initializer", "initargs"):
        if not hasattr(executor, f"_{argument}"):
            raise AttributeError(f"ProcessPoolExecutor keeps no {argument} on this Python")
        settings[argument] = getattr(executor, f"_{argument}")
    # Only Python >= 3.11 knows max_tasks_per_child; it refuses it with the default "fork" context.
    limit = getattr(executor, "_max_tasks_per_child", None)
    if limit is not None:
        settings["max_tasks_per_child"] = limit
    return settings


def pool_processes(executor: ProcessPoolExecutor) -> list[Any]:
    """The worker processes of a process pool (``multiprocessing.Process`` objects), if known."""
    return list((getattr(executor, "_processes", None) or {}).values())


def pool_broken(executor: ProcessPoolExecutor) -> bool:
    """Whether a process pool has broken (a worker died); ``submit`` would raise."""
    return bool(getattr(executor, "_broken", False))
