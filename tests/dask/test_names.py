"""Two Dask backends in one session, told apart by name= (contract v2)."""

from __future__ import annotations

import asyncio

import distributed

import rhapsody
from rhapsody import ComputeTask, Session
from rhapsody_dask import DaskBackend


def worker_address() -> str:
    return distributed.get_worker().address


def test_two_named_dask_backends_route_by_name() -> None:
    async def body() -> None:
        cpu = DaskBackend(name="cpu", n_workers=1, threads_per_worker=1)
        gpu = rhapsody.get_backend("dask", name="gpu", n_workers=1, threads_per_worker=1)
        assert (cpu.name, gpu.name, type(gpu).name) == ("cpu", "gpu", "dask")
        async with Session(backends=[cpu, gpu]) as session:
            on_cpu = ComputeTask(function=worker_address, backend="cpu")
            on_gpu = ComputeTask(function=worker_address, backend="gpu")
            await session.submit_tasks([on_cpu, on_gpu])
            await session.wait_tasks([on_cpu, on_gpu], timeout=120)
            cpu_workers = set(cpu.client.scheduler_info()["workers"])
            gpu_workers = set(gpu.client.scheduler_info()["workers"])
            assert on_cpu.return_value in cpu_workers and on_gpu.return_value in gpu_workers
            assert cpu_workers.isdisjoint(gpu_workers)

    asyncio.run(asyncio.wait_for(body(), 240))
