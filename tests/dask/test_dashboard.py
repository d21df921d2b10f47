"""The backend's own LocalCluster serves no dashboard (and takes no port 8787) unless asked."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import psutil

from rhapsody import ComputeTask, Session
from rhapsody_dask import DaskBackend


def _status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def _listening_ports() -> set[int]:
    # The scheduler of a LocalCluster runs in this process; its workers are other processes.
    return {c.laddr.port for c in psutil.Process().net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN}


def test_no_dashboard_by_default() -> None:
    async def body() -> tuple[Any, ...]:
        backend = DaskBackend(n_workers=1)
        before = _listening_ports()
        async with Session(backends=[backend]) as session:
            task = ComputeTask(function=sum, args=([1, 2],))
            await session.submit_tasks([task])
            await session.wait_tasks([task])
            assert task.return_value == 3
            assert backend.dashboard_link is None
            scheduler = backend._own_cluster.scheduler
            port = scheduler.http_server.port
            opened = _listening_ports() - before
            # Dask's health and metrics routes are on a free loopback port, not on 8787...
            assert port != 8787 and 8787 not in opened
            assert scheduler.http_server.address == "127.0.0.1"
            loop = asyncio.get_running_loop()
            health, status = [
                await loop.run_in_executor(None, _status_of, f"http://127.0.0.1:{port}/{page}")
                for page in ("health", "status")]
            return health, status

    # ...and the dashboard pages are not served at all.
    assert asyncio.run(asyncio.wait_for(body(), 120)) == (200, 404)


def test_dashboard_when_asked_for() -> None:
    async def body() -> None:
        # ":8787" in real use; a free port here, so that the test does not depend on 8787.
        backend = DaskBackend(n_workers=1, cluster_options={"dashboard_address": "127.0.0.1:0"})
        async with Session(backends=[backend]):
            link = backend.dashboard_link
            assert link is not None and link.endswith("/status")
            status = await asyncio.get_running_loop().run_in_executor(None, _status_of, link)
            assert status == 200

    asyncio.run(asyncio.wait_for(body(), 120))
