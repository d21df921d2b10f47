"""Fixtures for the rhapsody-dask tests: real Dask clusters (worker processes under nannies)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# The root conftest loads no installed plugin; these tests use the dask one.
os.environ["RHAPSODY_LOAD_PLUGINS"] = "dask"

distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")


def _nanny(**options: Any) -> dict[str, Any]:
    return {"cls": distributed.Nanny, "options": {"nthreads": 1, "dashboard_address": None, **options}}


# dashboard_address=None alone still binds the scheduler's HTTP routes to port 8787.
_NO_DASHBOARD = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}


def _spec_cluster(workers: dict[str, dict[str, Any]]) -> Iterator[Any]:
    cluster = distributed.SpecCluster(
        workers=workers, scheduler={"cls": distributed.Scheduler, "options": _NO_DASHBOARD},
    )
    try:
        with distributed.Client(cluster) as client:
            client.wait_for_workers(len(workers), timeout=120)
        yield cluster
    finally:
        cluster.close(timeout=30)


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[Any]:
    """One plain worker ("cpu") and one advertising GPU=1 ("gpu"), each one thread."""
    yield from _spec_cluster({"cpu": _nanny(), "gpu": _nanny(resources={"GPU": 1})})


@pytest.fixture(scope="module")
def portable_cluster() -> Iterator[Any]:
    """What portable resources become, four threads each: "gpu" advertises CPU=4, GPU=2,
    MEMORY=1024 (MiB) and "big" advertises CPU=4, MEMORY=4096."""
    yield from _spec_cluster({
        "gpu": _nanny(nthreads=4, resources={"CPU": 4, "GPU": 2, "MEMORY": 1024}),
        "big": _nanny(nthreads=4, resources={"CPU": 4, "MEMORY": 4096}),
    })
