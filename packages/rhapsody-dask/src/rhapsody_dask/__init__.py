"""rhapsody-dask: run rhapsody tasks on a Dask cluster.

>>> import rhapsody
>>> backend = rhapsody.get_backend("dask", n_workers=2)  # doctest: +SKIP

Importing this package never imports Dask; the backend does that when it is initialised.
"""

from __future__ import annotations

from .backend import DaskBackend
from .errors import TaskLoadError, UnsatisfiableResourcesError, WorkerLostError

__all__ = ["DaskBackend", "TaskLoadError", "UnsatisfiableResourcesError", "WorkerLostError"]
