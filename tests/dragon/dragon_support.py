"""Shared by the Dragon test modules: whether this process runs inside a Dragon runtime."""

from __future__ import annotations

import os


def runtime_missing() -> str:
    """Why the runtime tests cannot run here ("" when they can)."""
    try:
        from dragon.infrastructure.parameters import this_process
    except ImportError as exc:
        return f"dragonhpc is not installed ({exc})"
    if not this_process.gs_qd:
        return "not inside a Dragon runtime: run `nox -s tests-dragon` (pytest under the dragon launcher)"
    return ""


# Batch gives one worker per physical core (half the logical CPUs), at least one.
WORKERS = max(1, (os.cpu_count() or 2) // 2)
