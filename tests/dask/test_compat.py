"""The private attributes of Dask Distributed that rhapsody_dask._compat reads still exist: a release
that renames one fails here, by name and with the installed version, instead of leaving tasks
unreported or a client's event handler unchained."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import pytest

from rhapsody_dask._compat import client_event_handler, future_state

distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")

INSTALLED = f"distributed {version('distributed')}"


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def test_future_state_is_an_awaitable_settled_event(client: Any) -> None:
    future = client.submit(abs, -3, pure=False)
    assert hasattr(future, "_state"), f"{INSTALLED}: Future has no _state (rhapsody_dask._compat)"
    state = future_state(future)
    assert state is not None, f"{INSTALLED}: Future._state is None for a submitted future"
    assert asyncio.iscoroutinefunction(getattr(state, "wait", None)), \
        f"{INSTALLED}: Future._state.wait is not a coroutine function (rhapsody_dask._compat)"

    async def settled() -> None:
        await state.wait()

    client.sync(settled)
    assert future.done() and future.result() == 3


def test_future_state_names_the_attribute_when_it_is_gone() -> None:
    with pytest.raises(AttributeError, match=r"distributed .* has no Future\._state"):
        future_state(object())


def test_client_event_handler_reads_the_subscribed_handler(client: Any) -> None:
    assert isinstance(getattr(client, "_event_handlers", None), dict), \
        f"{INSTALLED}: Client has no _event_handlers dict (rhapsody_dask._compat)"

    def handler(event: Any) -> None:
        pass

    client.subscribe_topic("rhapsody-compat", handler)
    try:
        assert client_event_handler(client, "rhapsody-compat") is handler, \
            f"{INSTALLED}: Client._event_handlers does not keep the subscribed handler"
    finally:
        client.unsubscribe_topic("rhapsody-compat")
    assert client_event_handler(client, "rhapsody-compat-never-subscribed") is None
