"""The built-in concurrent backend passes the conformance kit, on threads and on processes."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest

from rhapsody import get_backend
from rhapsody.backend import BaseBackend
from rhapsody.testing import BackendConformance


class TestConcurrentThreads(BackendConformance):
    backend_name = "concurrent"
    backend_options = {"max_workers": 4, "max_subprocesses": 4}


class TestConcurrentProcesses(BackendConformance):
    backend_name = "concurrent"

    def make_backend(self, request: pytest.FixtureRequest) -> BaseBackend:
        pool = ProcessPoolExecutor(max_workers=2)
        request.addfinalizer(pool.shutdown)
        return get_backend("concurrent", executor=pool, max_subprocesses=4)


class TestConcurrentCloseOnSharedSession(BackendConformance):
    """The kit's option for heavy engines: the close test closes the class's own session."""

    backend_name = "concurrent"
    close_shared_session = True
