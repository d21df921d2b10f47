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

from .backend import BaseBackend
from .errors import BackendUnavailableError, SessionClosedError, TaskExecutionError, WorkerLostError
from .hookspecs import hookimpl
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
    "Session",
    "SessionClosedError",
    "TERMINAL_STATES",
    "Task",
    "TaskExecutionError",
    "TaskState",
    "discover_backends",
    "get_backend",
    "hookimpl",
    "register_plugin",
    "unregister_plugin",
    "WorkerLostError",
]
