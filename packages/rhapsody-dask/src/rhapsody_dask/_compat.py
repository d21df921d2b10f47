"""The private attributes of Dask Distributed that rhapsody-dask reads, each in one place.

Distributed has no public way to wait for a future from its client's event loop without a thread
or a callback per future, nor to read the handler a client has for an event topic. Each read is
here, by name, and ``tests/dask/test_compat.py`` fails loudly on the Distributed release that
renames one. ``pyproject.toml`` bounds Distributed below the next release not yet tested.
"""

from __future__ import annotations

from typing import Any


def future_state(future: Any) -> Any:
    """A Dask future's ``FutureState`` (``future._state``), or None before it is bound to its client.

    Its ``wait()`` coroutine returns once the task finished, erred or was cancelled: the same wait
    Dask's own ``as_completed`` and ``Future._result`` make. The public ways (``add_done_callback``,
    ``as_completed``) add a thread hop or a waiter per future, so the backend awaits this instead.

    Raises:
        AttributeError: this Distributed's ``Future`` has no ``_state`` (the message says so).
    """
    try:
        return future._state
    except AttributeError:
        raise AttributeError(_missing("Future._state")) from None


def client_event_handler(client: Any, topic: str) -> Any:
    """The handler ``client`` has for event ``topic`` (``client._event_handlers``), or None.

    ``Client.subscribe_topic`` keeps one handler per topic and replaces any other; there is no
    public getter, so the backend reads it to chain it and put it back on close. A Distributed
    without the mapping reads as "no handler" (the one it had is then not chained).
    """
    return getattr(client, "_event_handlers", {}).get(topic)


def _missing(name: str) -> str:
    from importlib.metadata import version

    return (f"distributed {version('distributed')} has no {name}: "
            "rhapsody_dask._compat needs updating for this release")
