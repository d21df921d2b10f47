"""The concurrent backend's node bookkeeping (rhapsody.builtin.node), driven directly: who gets
which device, who waits, and what a cancelled wait gives back."""

from __future__ import annotations

import asyncio

from rhapsody import Resources
from rhapsody.builtin.node import Demand, Node


def node(cores: int = 4, gpus: int = 2, slots: int = 8) -> Node:
    return Node(cores=cores, gpus=[f"d{i}" for i in range(gpus)], gpu_variable="CUDA_VISIBLE_DEVICES",
                memory=1000, slots=slots)


def demand(**request: float) -> Demand:
    return Demand.of(Resources.from_request(request, uid="t"))


def test_fractions_pack_onto_one_device_and_whole_gpus_take_idle_ones() -> None:
    async def main() -> None:
        box = node()
        half_a = await box.acquire(demand(gpus_per_rank=0.5))
        half_b = await box.acquire(demand(gpus_per_rank=0.5))
        assert box.visible(half_a) == box.visible(half_b) == "d0"  # best fit keeps d1 whole
        whole = await box.acquire(demand(gpus_per_rank=1))
        assert box.visible(whole) == "d1"
        third = asyncio.ensure_future(box.acquire(demand(gpus_per_rank=0.25)))
        await asyncio.sleep(0)
        assert not third.done()  # no device has a quarter left
        box.release(half_a)
        assert box.visible(await third) == "d0"

    asyncio.run(main())


def test_ranks_of_fractions_may_span_devices() -> None:
    request = Resources.from_request({"ranks": 3, "gpus_per_rank": 0.5}, uid="t")
    assert Demand.of(request).pieces == (500, 500, 500)

    async def main() -> None:
        box = node()
        grant = await box.acquire(Demand.of(request))
        assert box.visible(grant) == "d0,d1"
        assert grant.cores == 3

    asyncio.run(main())


def test_a_waiting_task_holds_back_what_it_needs_and_a_cancelled_one_lets_go() -> None:
    async def main() -> None:
        box = node(cores=2)
        first = await box.acquire(demand())
        wide = asyncio.ensure_future(box.acquire(demand(cores_per_rank=2)))
        small = asyncio.ensure_future(box.acquire(demand()))
        await asyncio.sleep(0)
        assert not wide.done() and not small.done()  # the free core is set aside for wide
        wide.cancel()
        await asyncio.wait_for(small, 5)  # wide gave up its turn: small starts on the free core
        box.release(first)
        box.release(small.result())
        again = await box.acquire(demand(cores_per_rank=2))
        assert again.cores == 2

    asyncio.run(main())


def test_a_grant_cancelled_before_it_was_taken_is_given_back() -> None:
    async def main() -> None:
        box = node(cores=1)
        first = await box.acquire(demand())
        waiting = asyncio.ensure_future(box.acquire(demand()))
        await asyncio.sleep(0)
        box.release(first)  # grants it to the waiter ...
        waiting.cancel()    # ... which is cancelled before it resumed
        await asyncio.sleep(0)
        assert waiting.cancelled()
        grant = await asyncio.wait_for(box.acquire(demand()), 5)  # the core came back
        assert grant.cores == 1

    asyncio.run(main())


def test_slots_bound_how_many_programs_run() -> None:
    async def main() -> None:
        box = node(cores=8, slots=1)
        held = await box.acquire(demand())
        later = asyncio.ensure_future(box.acquire(demand()))
        await asyncio.sleep(0)
        assert not later.done()
        box.release(held)
        await asyncio.wait_for(later, 5)

    asyncio.run(main())
