"""Per-task options: each bad one is refused at submit, by name, and nothing of the call runs.

Also: importing rhapsody_dask never imports Dask, the plugin registers through its entry point,
and ``check_available`` raises Dask's own ImportError when Dask is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from typing import Any

import distributed
import pytest

import rhapsody
from rhapsody import ComputeTask, Session
from rhapsody_dask import DaskBackend


def name_of_worker() -> str:
    return str(distributed.get_worker().name)


async def sleeper() -> str:
    await asyncio.sleep(60)
    return "too late"


def _shell(**options: Any) -> ComputeTask:
    return ComputeTask(executable="true", task_backend_specific_kwargs=options)


def _func(timeout: float | None = None, **options: Any) -> ComputeTask:
    return ComputeTask(function=name_of_worker, timeout=timeout, task_backend_specific_kwargs=options)


BAD_TASKS = [
    (lambda: _func(gpu_count=1), ValueError, r"does not understand task_backend_specific_kwargs \['gpu_count'\]"),
    (lambda: _func(cwd="/tmp"), ValueError, r"\['cwd'\] for function tasks"),
    (lambda: _func(timeout=5), ValueError, "cannot interrupt a running sync function"),
    (lambda: _func(retries="2"), TypeError, "retries must be an integer, got '2'"),
    (lambda: _func(retries=-1), ValueError, "retries must be >= 0, got -1"),
    (lambda: _func(priority=1.5), TypeError, "priority must be an integer, got 1.5"),
    (lambda: _func(resources={"GPU": 0}), ValueError, r"resources\['GPU'\] must be > 0"),
    (lambda: _shell(env={"A": 1}), TypeError, "env must be a dict of str to str"),
    (lambda: _shell(cwd=3), TypeError, "cwd must be a path, got 3"),
    (lambda: _shell(shell="yes"), TypeError, "shell must be True or False, got 'yes'"),
    (lambda: _shell(resources="GPU"), TypeError, "resources must be a dict"),
    (lambda: ComputeTask(executable="/bin/true", capture_stdio=False), ValueError,
     "capture_stdio=False is not supported on Dask"),
]


def test_bad_task_options_are_rejected_by_name_and_nothing_is_submitted() -> None:
    async def body() -> None:
        backend = DaskBackend(n_workers=1, threads_per_worker=1, worker_resources={"GPU": 1})
        async with Session(backends=[backend]) as session:
            for make, error, message in BAD_TASKS:
                good = _func()
                bad = make()
                with pytest.raises(error, match=message):
                    await session.submit_tasks([good, bad])
                assert good.state == bad.state == "NEW"
                assert session.in_flight == 0
            # worker_resources: every worker of the own cluster advertises them.
            ok = _func(resources={"GPU": 1}, priority=5)
            await session.submit_tasks([ok])
            await session.wait_tasks([ok])
            assert (ok.state, ok.exception) == ("DONE", None)

    asyncio.run(asyncio.wait_for(body(), 180))


def test_a_refusal_by_dask_leaves_another_backends_part_of_the_call_unsubmitted(tmp_path: Any) -> None:
    marker = tmp_path / "ran"

    async def body() -> None:
        backends = [DaskBackend(n_workers=1), rhapsody.get_backend("concurrent")]
        async with Session(backends=backends) as session:
            elsewhere = ComputeTask(executable="/bin/sh", arguments=["-c", f"touch {marker}"],
                                    backend="concurrent")
            bad = ComputeTask(function=name_of_worker, backend="dask",
                              task_backend_specific_kwargs={"gpu_count": 1})
            with pytest.raises(ValueError, match=r"does not understand .*gpu_count"):
                await session.submit_tasks([elsewhere, bad])
            assert elsewhere.state == bad.state == "NEW" and session.in_flight == 0
        assert not marker.exists()

    asyncio.run(asyncio.wait_for(body(), 180))


def test_async_function_timeout_fails_with_timeout_error() -> None:
    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=1)]) as session:
            task = ComputeTask(function=sleeper, timeout=0.5)
            [future] = await session.submit_tasks([task])
            with pytest.raises(TimeoutError, match="timeout of 0.5 s"):
                await future
            assert task.state == "FAILED"

    asyncio.run(asyncio.wait_for(body(), 180))


def test_a_task_dask_cannot_serialise_fails_alone() -> None:
    async def body() -> None:
        async with Session(backends=[DaskBackend(n_workers=1)]) as session:
            good = [ComputeTask(function=name_of_worker) for _ in range(3)]
            bad = ComputeTask(function=name_of_worker, kwargs={"lock": threading.Lock()})
            shell = ComputeTask(executable="true")
            futures = await session.submit_tasks([shell, good[0], bad, *good[1:]])
            with pytest.raises(TypeError, match="cannot pickle"):
                await futures[2]
            await session.wait_tasks([shell, *good])
            assert [t.state for t in (shell, *good)] == ["DONE"] * 4
            assert "lock" in repr(bad.exception.args) and bad.state == "FAILED"

    asyncio.run(asyncio.wait_for(body(), 180))


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_importing_the_plugin_does_not_import_dask() -> None:
    done = _python(
        "import sys, rhapsody_dask, rhapsody_dask.plugin\n"
        "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_backend_is_registered_through_its_entry_point() -> None:
    done = _python(
        "import json, rhapsody\n"
        "info = rhapsody.discover_backends()['dask']\n"
        "print(json.dumps([info.distribution, info.available, info.backend_class.__name__,"
        " info.backend_class.engine_versions()]))",
        RHAPSODY_LOAD_PLUGINS="dask",
    )
    assert done.returncode == 0, done.stderr
    distribution, available, cls, versions = json.loads(done.stdout)
    assert (distribution, available, cls) == ("rhapsody-dask", True, "DaskBackend")
    import dask

    assert versions == {"dask": dask.__version__, "distributed": distributed.__version__}


def test_without_dask_check_available_raises_its_import_error() -> None:
    # A None entry in sys.modules makes `import distributed` raise ImportError, as when missing.
    done = _python(
        "import sys; sys.modules['distributed'] = None\n"
        "import rhapsody\n"
        "from rhapsody_dask import DaskBackend\n"
        "try:\n"
        "    DaskBackend.check_available()\n"
        "except ImportError as exc:\n"
        "    print('ImportError', exc.name)\n"
        "info = rhapsody.discover_backends()['dask']\n"
        "print(info.available, info.reason)",
        RHAPSODY_LOAD_PLUGINS="dask",
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()
    assert first == "ImportError distributed"
    assert second.startswith("False ") and "Error" in second and "distributed" in second
