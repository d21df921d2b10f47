"""cluster= and client=: the backend uses what it is given and never closes it."""

from __future__ import annotations

import asyncio
from typing import Any

import distributed
import pytest

from rhapsody import ComputeTask, Session
from rhapsody_dask import DaskBackend


def square(x: int) -> int:
    return x * x


async def async_square(x: int) -> int:
    await asyncio.sleep(0.01)
    return x * x


async def _run_some(session: Session) -> None:
    tasks = [ComputeTask(function=square, args=(i,)) for i in range(20)]
    tasks.append(ComputeTask(function=async_square, args=(9,)))
    tasks.append(ComputeTask(executable="/bin/echo", arguments=["given"]))
    await session.submit_tasks(tasks)
    await session.wait_tasks(tasks)
    assert [t.return_value for t in tasks[:21]] == [i * i for i in range(20)] + [81]
    assert tasks[-1].stdout.strip() == "given"


def test_given_cluster_is_used_and_left_running(gpu_cluster: Any) -> None:
    backend = DaskBackend(cluster=gpu_cluster)

    async def body() -> None:
        async with Session(backends=[backend]) as session:
            await _run_some(session)
            assert backend.client.scheduler.address == gpu_cluster.scheduler_address
            # Ended tasks leave no future behind (their results would stay on the workers).
            for _ in range(100):
                if not backend.client.futures:
                    break
                await asyncio.sleep(0.1)
            assert not backend.client.futures

    asyncio.run(asyncio.wait_for(body(), 120))
    # The backend closed its own client only: the cluster still runs work.
    assert backend._client.status == "closed"
    with distributed.Client(gpu_cluster) as client:
        assert client.submit(square, 12).result(timeout=60) == 144


def test_given_asynchronous_client_and_cluster_are_left_open() -> None:
    async def body() -> None:
        async with distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
            asynchronous=True,
        ) as cluster, distributed.Client(cluster, asynchronous=True) as client:
            seen: list[Any] = []
            client.subscribe_topic("all", seen.append)
            backend = DaskBackend(client=client)
            async with Session(backends=[backend]) as session:
                await _run_some(session)
                assert backend.client is client
            assert client.status == "running"
            # The backend watched the client's events through the program's handler and gave
            # the topic back to it.
            await client.log_event("all", {"action": "rhapsody-test"})
            for _ in range(300):
                if any(event[1] == {"action": "rhapsody-test"} for event in seen):
                    break
                await asyncio.sleep(0.1)
            assert any(event[1] == {"action": "rhapsody-test"} for event in seen)
            assert await client.submit(square, 5) == 25

            # An asynchronous cluster object works as cluster= too.
            async with Session(backends=[DaskBackend(cluster=cluster)]) as session:
                await _run_some(session)
            assert await client.submit(square, 6) == 36

    asyncio.run(asyncio.wait_for(body(), 180))


@pytest.mark.parametrize(("options", "message"), [
    ({"cluster": object(), "client": object()}, "pass cluster= or client=, not both"),
    ({"client": object(), "n_workers": 2}, "n_workers shape the backend's own LocalCluster"),
    ({"cluster": object(), "worker_resources": {"GPU": 1}, "processes": False},
     "processes, worker_resources shape the backend's own LocalCluster"),
    ({"n_workers": 0}, "n_workers must be an integer >= 1, got 0"),
    ({"threads_per_worker": 1.5}, "threads_per_worker must be an integer >= 1, got 1.5"),
    ({"unsatisfiable_timeout": -1}, "unsatisfiable_timeout must be a number of seconds >= 0"),
    ({"close_timeout": "soon"}, "close_timeout must be a number of seconds >= 0"),
    ({"worker_resources": {"GPU": -1}}, r"resources\['GPU'\] must be > 0"),
])
def test_bad_backend_options_are_rejected_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        DaskBackend(**options)


def test_unknown_backend_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="scheduler_port"):
        DaskBackend(scheduler_port=1)  # type: ignore[call-arg]
