"""rhapsody-dask passes the core's conformance kit on real LocalClusters (worker processes)."""

from __future__ import annotations

from collections.abc import Iterator

import distributed
import pytest

from rhapsody.backend import BaseBackend
from rhapsody.testing import BackendConformance
from rhapsody_dask import DaskBackend


class TestDaskOwnLocalCluster(BackendConformance):
    """The default: the backend starts and closes its own LocalCluster."""

    backend_name = "dask"
    backend_options = {"n_workers": 2, "threads_per_worker": 1}
    many_tasks = 300
    queue_fill = 6  # 2 workers x 1 thread: six 2-second sleeps keep the next task queued


class TestDaskGivenClient(BackendConformance):
    """The same contract through ``client=``: the backend must leave the client and cluster alone."""

    backend_name = "dask"
    many_tasks = 300
    queue_fill = 6

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def dask_client(cls) -> Iterator[distributed.Client]:
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster, distributed.Client(cluster) as client:
            cls.client = client
            yield client
            # Everything the kit did is over, and the client still works.
            assert client.status == "running"
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6

    def make_backend(self, request: pytest.FixtureRequest) -> BaseBackend:
        return DaskBackend(client=type(self).client)
