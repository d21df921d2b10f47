"""``rhapsody.backends``: RHAPSODY's (``rhapsody-py``) backend class names, resolved to ours.

``get_backend``, ``discover_backends``, ``BaseBackend`` and ``Session`` are ours, as they are in
``rhapsody``. The old class names are resolved when a program names one, never at import: each
lookup gives a class that takes RHAPSODY's constructor arguments, and one ``DeprecationWarning``
saying what to write instead. A class whose engine distribution is not installed raises
``ImportError`` naming that distribution, as RHAPSODY did for a missing engine. Names with no
counterpart raise ``ImportError`` saying why. ``docs/migrating.md`` lists them all.

The classes these names give are subclasses of our backends: only their constructors differ
(RHAPSODY's parameters, positional as before, then any of ours by keyword), so an instance
behaves as ``get_backend(...)``'s does (``close()``; ``shutdown()`` is its old name).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from .api import _OLD_NAMES as _OLD_API_NAMES
from .api import _Refused, _Renamed, _resolve
from .backend import BaseBackend
from .builtin.concurrent import ConcurrentBackend
from .plugins import discover_backends, get_backend
from .session import Session
from .states import TaskState

__all__ = ["BaseBackend", "Session", "discover_backends", "get_backend"]


class _ConcurrentExecutionBackend(ConcurrentBackend):
    """The ``concurrent`` backend, made as RHAPSODY made it: ``ConcurrentExecutionBackend(executor)``.

    Args:
        executor: a ``ThreadPoolExecutor`` or ``ProcessPoolExecutor`` for function tasks; a
            thread pool when omitted. As in RHAPSODY, closing the backend shuts it down.
        name: the instance's name in a session.

    Raises:
        TypeError: ``executor`` is not a thread or process pool.
    """

    def __init__(self, executor: Executor | None = None, name: str = "concurrent",
                 **options: Any) -> None:
        super().__init__(executor=executor, name=name, **options)
        # RHAPSODY's shutdown() shut down the executor it was given; ConcurrentBackend never does.
        self._owns_executor = True

    @classmethod
    async def create(cls, executor: Executor | None = None) -> _ConcurrentExecutionBackend:
        """RHAPSODY's factory: a backend made with ``executor`` and already awaited."""
        backend = cls(executor)
        await backend
        return backend


# Not a module global under its old name: naming it must go through __getattr__ (the warning).
_ConcurrentExecutionBackend.__name__ = _ConcurrentExecutionBackend.__qualname__ = "ConcurrentExecutionBackend"


def _engine(distribution: str, module: str, old: str) -> Any:
    """Import an engine distribution's module, or say which distribution ``old`` needs.

    Raises:
        ImportError: the distribution is not installed (the message names it).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"rhapsody.backends.{old} needs the {distribution} distribution, which is not "
            f"installed here ({exc}): pip install ./packages/{distribution} from a clone of "
            "the rhapsody repository",
            name=module,
        ) from exc


# RHAPSODY gave these to dask.distributed.Client, which passes them on to the LocalCluster it
# starts; the rest of that dict goes to the cluster unchanged.
_DASK_SHAPE = ("n_workers", "threads_per_worker", "processes")


@functools.cache
def _dask_execution_backend() -> type[BaseBackend]:
    dask_backend: type[Any] = _engine("rhapsody-dask", "rhapsody_dask", "DaskExecutionBackend").DaskBackend

    class DaskExecutionBackend(dask_backend):  # type: ignore[misc, valid-type]
        """The ``dask`` backend, made as RHAPSODY made it.

        Args:
            resources: options of the ``LocalCluster`` the backend starts (``n_workers``,
                ``threads_per_worker``, ``processes``, ``resources`` for worker resources, and
                any other ``LocalCluster`` keyword).
            name: the instance's name in a session.
            cluster, client: an existing Dask cluster or client, as ``DaskBackend`` takes them.

        Raises:
            ValueError: ``resources`` together with ``cluster`` or ``client`` (they shape a
                cluster the backend starts itself), or what ``DaskBackend`` refuses.
        """

        def __init__(self, resources: Mapping[str, Any] | None = None, name: str = "dask",
                     cluster: Any = None, client: Any = None, **options: Any) -> None:
            cluster_options = dict(resources or {})
            if cluster_options and (cluster is not None or client is not None):
                raise ValueError(
                    "DaskExecutionBackend: resources= shapes the LocalCluster the backend starts; "
                    "with cluster= or client= configure that cluster itself"
                )
            shape = {key: cluster_options.pop(key) for key in _DASK_SHAPE if key in cluster_options}
            super().__init__(cluster=cluster, client=client, name=name,
                             worker_resources=cluster_options.pop("resources", None),
                             cluster_options=cluster_options or None, **shape, **options)

    return DaskExecutionBackend


@functools.cache
def _dragon_execution_backend() -> type[BaseBackend]:
    dragon_backend: type[Any] = _engine(
        "rhapsody-dragon", "rhapsody_dragon", "DragonExecutionBackend").DragonBackend

    class DragonExecutionBackend(dragon_backend):  # type: ignore[misc, valid-type]
        """The ``dragon`` backend, made as RHAPSODY 0.2's ``DragonExecutionBackendV3`` was."""

        def __init__(self, num_nodes: int | None = None, pool_nodes: int | None = None,
                     disable_telemetry: bool = False, name: str = "dragon", **options: Any) -> None:
            super().__init__(num_nodes=num_nodes, pool_nodes=pool_nodes,
                             disable_telemetry=disable_telemetry, name=name, **options)

    return DragonExecutionBackend


# The pilot description keys RadicalBackend takes as parameters of its own.
_PILOT_PARAMETERS = ("resource", "cores", "gpus", "nodes", "runtime", "queue", "project",
                     "access_schema")


@functools.cache
def _radical_execution_backend() -> type[BaseBackend]:
    radical_backend: type[Any] = _engine(
        "rhapsody-radical", "rhapsody_radical", "RadicalExecutionBackend").RadicalBackend

    class RadicalExecutionBackend(radical_backend):  # type: ignore[misc, valid-type]
        """The ``radical`` backend, made as RHAPSODY made it.

        Args:
            resources: the pilot description (``resource``, ``cores``, ``runtime``, ...);
                ``exit_on_error`` is dropped (a failed pilot fails its tasks instead).
            raptor_config: refused: the backend starts Raptor itself (``raptor_workers=``,
                ``raptor_cores_per_worker=`` of ``get_backend("radical", ...)``).
            name: the instance's name in a session (RHAPSODY's ``"radical_pilot"``).

        Raises:
            ValueError: a ``raptor_config``.
        """

        def __init__(self, resources: Mapping[str, Any] | None = None,
                     raptor_config: Mapping[str, Any] | None = None,
                     name: str = "radical_pilot", **options: Any) -> None:
            if raptor_config:
                raise ValueError(
                    "RadicalExecutionBackend: raptor_config= is not taken: the backend starts "
                    "its own Raptor master and workers; size them with "
                    "get_backend('radical', raptor_workers=n, raptor_cores_per_worker=c)"
                )
            description = dict(resources or {})
            # RHAPSODY set it (True by default) to have RP interrupt the program when the pilot
            # failed; RadicalBackend keeps it False and fails the pilot's tasks with its reason.
            description.pop("exit_on_error", None)
            own = {key: description.pop(key) for key in _PILOT_PARAMETERS if key in description}
            super().__init__(pilot_description=description or None, name=name, **own, **options)

    return RadicalExecutionBackend


_ENGINE_ONLY = "RHAPSODY's Dragon V1/V2 backends (process groups and a DDict per backend) were " \
    "replaced by one backend whose function tasks run on a pool of long-lived Dragon workers " \
    "(V2's model) and whose executables and MPI jobs run on the streaming Batch"

_OLD_NAMES: dict[str, _Renamed | _Refused] = {
    "ConcurrentExecutionBackend": _Renamed(
        lambda: _ConcurrentExecutionBackend,
        "rhapsody.get_backend('concurrent', executor=...) (or processes=n for a process pool)"),
    "DaskExecutionBackend": _Renamed(
        _dask_execution_backend,
        "rhapsody.get_backend('dask', n_workers=..., worker_resources=...) or "
        "rhapsody_dask.DaskBackend(cluster=... | client=...)"),
    "DragonExecutionBackend": _Renamed(
        _dragon_execution_backend,
        "rhapsody.get_backend('dragon', num_nodes=..., pool_nodes=...)"),
    "DragonExecutionBackendV3": _Renamed(
        _dragon_execution_backend,
        "rhapsody.get_backend('dragon', num_nodes=..., pool_nodes=...)"),
    "RadicalExecutionBackend": _Renamed(
        _radical_execution_backend,
        "rhapsody.get_backend('radical', resource=..., cores=..., pilot_description={...})"),
    "TasksMainStates": _Renamed(
        lambda: TaskState,
        "rhapsody.TaskState (plain strings: TaskState.DONE == 'DONE', no .value)"),
    "DragonExecutionBackendV1": _Refused(f"{_ENGINE_ONLY}: use get_backend('dragon')"),
    "DragonExecutionBackendV2": _Refused(f"{_ENGINE_ONLY}: use get_backend('dragon')"),
    "DragonTelemetryCollector": _Refused(
        "rhapsody collects no telemetry; plugins hear of every task state change "
        "(the rhapsody_task_states_changed hook)"),
    "DragonVllmInferenceBackend": _Refused(
        "LLM requests run on the vllm backend of rhapsody-vllm: get_backend('vllm', model=...) "
        "starts a server, inference_endpoint= uses a running one"),
    "StateMapper": _Refused(
        "every backend reports the same states, rhapsody.TaskState; there is nothing to map"),
    "BackendRegistry": _OLD_API_NAMES["BackendRegistry"],
}
"""RHAPSODY's ``rhapsody.backends`` names, and what each now is."""


def __getattr__(name: str) -> Any:
    return _resolve(__name__, name, _OLD_NAMES)
