"""The private attributes rhapsody._compat reads still exist on this Python: a release that renames
one fails here, by name, instead of degrading the process pool's recovery quietly."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from rhapsody._compat import executor_workers, pool_broken, pool_processes, process_pool_settings


def test_pool_sizes_are_read() -> None:
    with ThreadPoolExecutor(max_workers=3) as threads:
        assert executor_workers(threads) == 3
    with ProcessPoolExecutor(max_workers=2) as processes:
        assert executor_workers(processes) == 2


def test_a_process_pool_can_be_rebuilt_from_its_settings() -> None:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context, initializer=print, initargs=("x",)) as pool:
        settings = process_pool_settings(pool)
    assert settings["max_workers"] == 2 and settings["mp_context"] is context
    assert (settings["initializer"], settings["initargs"]) == (print, ("x",))
    ProcessPoolExecutor(**settings).shutdown()


def test_workers_and_brokenness_are_seen() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        assert pool.submit(abs, -1).result(timeout=60) == 1
        workers = pool_processes(pool)
        assert len(workers) == 1 and workers[0].is_alive()
        assert not pool_broken(pool)
        workers[0].kill()
        workers[0].join(30)
        try:
            pool.submit(abs, -1).result(timeout=60)
        except Exception:
            pass
        assert pool_broken(pool)
