"""RHAPSODY's DaskExecutionBackend on real Dask clusters: a legacy program run unchanged as a
subprocess on its own LocalCluster, RHAPSODY's constructor arguments (resources= for the cluster,
worker resources, cluster=/client= positionally), and shutdown()."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import subprocess
import sys
import warnings
from typing import Any

import distributed
import pytest

import rhapsody.backends
from rhapsody import ComputeTask, Session
from rhapsody_dask import DaskBackend, UnsatisfiableResourcesError

PROGRAMS = pathlib.Path(__file__).resolve().parents[1] / "core" / "legacy_programs"


def worker_name() -> str:
    return str(distributed.get_worker().name)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 180))


def old_class() -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls = rhapsody.backends.DaskExecutionBackend
    assert [str(w.message).split(":")[0] for w in caught] == [
        "rhapsody.backends.DaskExecutionBackend is a RHAPSODY name, deprecated"]
    return cls


def test_the_dask_program_runs_unchanged_on_its_own_local_cluster() -> None:
    env = {**os.environ, "RHAPSODY_LOAD_PLUGINS": "dask"}
    result = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", str(PROGRAMS / "dask_backend.py")],
        capture_output=True, text=True, timeout=300, env=env, cwd=PROGRAMS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "done 9 failed 1",
        "0 ''", "1 ''", "8 ''",  # sync functions: return value, stdout ""
        "0 ''", "1 ''", "8 ''",  # async functions
        "line 0", "line 1", "line 2",
        "5 no",
    ]
    # One warning for the one old name, in the program and in each worker process that imports
    # the script again (as __mp_main__; Python shows it there only under -W always).
    said = set(re.findall(r"DeprecationWarning: (.*)", result.stderr))
    assert said == {"rhapsody.backends.DaskExecutionBackend is a RHAPSODY name, deprecated: write "
                    "rhapsody.get_backend('dask', n_workers=..., worker_resources=...) or "
                    "rhapsody_dask.DaskBackend(cluster=... | client=...) (see docs/migrating.md)"}


def test_resources_shape_the_local_cluster_and_its_worker_resources() -> None:
    cls = old_class()
    assert issubclass(cls, DaskBackend) and cls.__name__ == "DaskExecutionBackend"

    async def body() -> None:
        # Portable requests become CPU (cores) and GPU worker resources: advertise both.
        backend = cls({"n_workers": 1, "threads_per_worker": 1, "resources": {"CPU": 1, "GPU": 1},
                       "processes": False})
        async with Session(backends=[backend]) as session:
            workers = backend.client.scheduler_info()["workers"]
            assert [w["resources"] for w in workers.values()] == [{"CPU": 1, "GPU": 1}]
            old_style = ComputeTask(function=worker_name,
                                    task_backend_specific_kwargs={"resources": {"GPU": 1}})
            portable = ComputeTask(function=worker_name, resources={"gpus_per_rank": 1})
            too_many = ComputeTask(function=worker_name,
                                   task_backend_specific_kwargs={"resources": {"GPU": 2}})
            futures = await session.submit_tasks([old_style, portable, too_many])
            await session.wait_tasks([old_style, portable, too_many])
            assert (old_style.state, portable.state) == ("DONE", "DONE"), portable.exception
            with pytest.raises(UnsatisfiableResourcesError, match="GPU"):
                await futures[2]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await backend.shutdown()  # already closed with the session: returns at once
        assert len(caught) == 1 and "backend.close()" in str(caught[0].message)

    run(body())


def test_cluster_and_client_are_taken_positionally_as_before(gpu_cluster: Any) -> None:
    cls = old_class()

    async def body() -> None:
        async with cls(None, "legacy", gpu_cluster) as backend:
            assert backend.name == "legacy"
            session = Session([backend])
            async with session:
                task = ComputeTask(function=worker_name, backend="legacy",
                                   task_backend_specific_kwargs={"resources": {"GPU": 1}})
                await session.submit_tasks([task])
                assert (await task).return_value == "gpu"

    async def with_client(client: distributed.Client) -> None:
        async with Session([cls(client=client)]) as session:
            task = ComputeTask(function=worker_name)
            await session.submit_tasks([task])
            assert (await task).return_value in {"cpu", "gpu"}

    run(body())
    with distributed.Client(gpu_cluster) as client:
        run(with_client(client))
        assert client.status == "running"  # a given client is never closed
    with pytest.raises(ValueError, match="resources= shapes the LocalCluster"):
        cls({"n_workers": 2}, cluster=gpu_cluster)
