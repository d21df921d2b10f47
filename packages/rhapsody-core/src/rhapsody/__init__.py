"""rhapsody: run large workloads of tasks on HPC machines through interchangeable backends.

>>> import asyncio, rhapsody
>>> async def main():
...     async with rhapsody.Session() as session:
...         task = rhapsody.ComputeTask(function=sum, args=([1, 2, 3],))
...         await session.submit_tasks([task])
...         return (await task).return_value
>>> asyncio.run(main())
6
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import Any

from .backend import BaseBackend
from .errors import (
    BackendUnavailableError,
    RhapsodyError,
    SessionClosedError,
    TaskExecutionError,
    WorkerLostError,
)
from .hookspecs import hookimpl
from .logs import enable_logging
from .plugins import BackendInfo, discover_backends, get_backend, register_plugin, unregister_plugin
from .resources import Resources
from .session import Session
from .states import TERMINAL_STATES, TaskState
from .task import AITask, ComputeTask, Task

__all__ = [
    "AITask",
    "BackendInfo",
    "BackendUnavailableError",
    "BaseBackend",
    "ComputeTask",
    "Resources",
    "RhapsodyError",
    "Session",
    "SessionClosedError",
    "TERMINAL_STATES",
    "Task",
    "TaskExecutionError",
    "TaskState",
    "discover_backends",
    "enable_logging",
    "get_backend",
    "hookimpl",
    "register_plugin",
    "unregister_plugin",
    "WorkerLostError",
]

try:
    __version__ = _version("rhapsody-core")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    # RHAPSODY's top-level names (rhapsody.BaseTask, rhapsody.SessionError, ...): see rhapsody.api.
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .api import _OLD_NAMES, _resolve

    return _resolve(__name__, name, _OLD_NAMES)
