"""The Raptor worker class the backend starts (loaded by RP from this file, inside the pilot).

RP's DefaultWorker forks a process for every function call. Importing rhapsody's call runner and
cloudpickle here, once, lets every forked call inherit them instead of importing them again.
"""

from __future__ import annotations

import cloudpickle  # noqa: F401 - preloaded for the forked calls
import radical.pilot as rp

from rhapsody_radical import functions  # noqa: F401 - preloaded for the forked calls


class RhapsodyWorker(rp.raptor.DefaultWorker):  # type: ignore[misc]
    """RP's DefaultWorker, started with rhapsody's runner already imported."""
