"""Backend contract v2: every backend takes ``name=``; backends are async context managers;
``bool(BackendInfo)`` is whether the backend can run here."""

from __future__ import annotations

import pytest

from rhapsody import ComputeTask, Session, discover_backends, get_backend
from rhapsody.builtin.concurrent import ConcurrentBackend
from rhapsody.builtin.noop import NoopBackend
from rhapsody.plugins import BackendInfo
from rhapsody.testing import workloads

# -- name= -----------------------------------------------------------------------------------


def test_the_class_name_is_the_default_and_the_registry_name_stays() -> None:
    assert ConcurrentBackend().name == "concurrent"
    io = ConcurrentBackend(name="io")
    assert io.name == "io" and ConcurrentBackend.name == "concurrent"
    assert "name='io'" in repr(io)
    assert NoopBackend(name="dry").name == "dry" and NoopBackend.name == "noop"


def test_get_backend_passes_name_to_the_constructor() -> None:
    backend = get_backend("concurrent", name="cpu", max_workers=2)
    assert isinstance(backend, ConcurrentBackend) and backend.name == "cpu"
    assert get_backend("noop", name="dry").name == "dry"


def test_an_unknown_option_still_names_the_options_including_name() -> None:
    with pytest.raises(TypeError, match=r"backend 'noop' \(NoopBackend\) has no option 'workers'; "
                                        r"its options are: name$"):
        get_backend("noop", name="x", workers=2)


@pytest.mark.parametrize("name", ["", 3, b"io"])
def test_a_bad_name_is_refused(name: object) -> None:
    with pytest.raises(TypeError, match=r"ConcurrentBackend: name must be a non-empty string, got "):
        ConcurrentBackend(name=name)  # type: ignore[arg-type]


async def test_two_instances_of_one_backend_live_in_one_session() -> None:
    cpu = get_backend("concurrent", name="cpu", max_workers=2)
    io = get_backend("concurrent", name="io", max_subprocesses=2)
    async with Session(backends=[cpu, io]) as session:
        on_io = [ComputeTask(function=workloads.add, args=(i, 1), backend="io") for i in range(3)]
        on_cpu = ComputeTask(function=workloads.add, args=(5, 5), backend="cpu")
        unnamed = ComputeTask(executable="/bin/echo", arguments=["x"])
        await session.submit_tasks([*on_io, on_cpu, unnamed])
        await session.wait_tasks([*on_io, on_cpu, unnamed])
    assert [(t.backend, t.state, t.return_value) for t in on_io] == [("io", "DONE", i + 1) for i in range(3)]
    assert (on_cpu.backend, on_cpu.return_value) == ("cpu", 10)
    assert unnamed.backend == "cpu" and unnamed.stdout == "x\n"  # the first suitable backend


def test_two_instances_with_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match=r"Session: two backends are named 'io'"):
        Session(backends=[ConcurrentBackend(name="io"), ConcurrentBackend(name="io")])
    with pytest.raises(ValueError, match=r"two backends are named 'concurrent'"):
        Session(backends=[ConcurrentBackend(), ConcurrentBackend()])


# -- async with backend ----------------------------------------------------------------------


async def test_async_with_initialises_on_entry_and_closes_on_exit() -> None:
    async with get_backend("concurrent", max_workers=1) as backend:
        assert isinstance(backend, ConcurrentBackend)
        assert backend.initialized and "ready" in repr(backend)
        assert await backend is backend  # await keeps working, once or many times
    assert "closed" in repr(backend)
    with pytest.raises(RuntimeError, match=r"backend 'concurrent' has been closed"):
        await backend


async def test_async_with_closes_when_the_block_raises() -> None:
    backend = NoopBackend(name="dry")
    with pytest.raises(KeyError):
        async with backend:
            raise KeyError("boom")
    with pytest.raises(RuntimeError, match=r"backend 'dry' has been closed"):
        await backend


async def test_a_backend_entered_with_async_with_runs_tasks_in_a_session() -> None:
    async with ConcurrentBackend(name="local") as backend, Session(backends=[backend]) as session:
        task = ComputeTask(function=workloads.add, args=(2, 2), backend="local")
        await session.submit_tasks([task])
        assert (await task).return_value == 4


# -- bool(BackendInfo) -----------------------------------------------------------------------


def test_backend_info_is_true_exactly_when_available() -> None:
    yes = BackendInfo("a", NoopBackend, None, None, True)
    no = BackendInfo("b", None, None, None, False, reason="ImportError: no engine")
    assert bool(yes) is True and bool(no) is False
    found = discover_backends()
    assert [name for name, ok in found.items() if ok] == [n for n, i in found.items() if i.available]
    assert {"concurrent", "noop"} <= {name for name, ok in found.items() if ok}
