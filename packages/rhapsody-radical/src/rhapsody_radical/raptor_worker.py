"""The Raptor worker class the backend starts (loaded by RP from this file, inside the pilot).

RP's DefaultWorker forks a process for every function call. Importing rhapsody's call runner and
cloudpickle here, once, lets every forked call inherit them instead of importing them again.

DefaultWorker also starts receiving requests before its constructor has set up what handling a
request needs (``_rlock``, ``_resources``, ...): a request that arrives in that window kills the
worker's request listener (AttributeError) and every later call then waits forever. Requests
wait here until the constructor has finished.
"""

from __future__ import annotations

import threading
from typing import Any

import cloudpickle  # noqa: F401 - preloaded for the forked calls
import radical.pilot as rp

from rhapsody_radical import functions  # noqa: F401 - preloaded for the forked calls


class RhapsodyWorker(rp.raptor.DefaultWorker):  # type: ignore[misc]
    """RP's DefaultWorker with rhapsody's runner preloaded and no start-up race."""

    def __init__(self, raptor_id: str) -> None:
        self._rhapsody_ready = threading.Event()
        super().__init__(raptor_id)
        self._rhapsody_ready.set()

    def _request_cb(self, tasks: Any) -> Any:
        self._rhapsody_ready.wait()
        return super()._request_cb(tasks)
