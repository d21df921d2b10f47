"""The backend conformance kit: the backend contract as a pytest suite.

Subclass :class:`BackendConformance` in a test module and name your backend::

    from rhapsody.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend_name = "mysite"
        backend_options = {"partition": "debug"}

Inference backends subclass :class:`AIBackendConformance` the same way.

Or run the kit against any installed backend without writing a file::

    pytest --pyargs rhapsody.testing.suite --rhapsody-backend=dask \\
        --rhapsody-backend-option n_workers=2
"""

from __future__ import annotations

from .ai_conformance import AIBackendConformance
from .conformance import FEATURES, BackendConformance, ConformanceHarness

__all__ = ["FEATURES", "AIBackendConformance", "BackendConformance", "ConformanceHarness"]
