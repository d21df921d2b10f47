"""The conformance kit against the backend named by ``--rhapsody-backend`` (see plugin.py)."""

from __future__ import annotations

import pytest

from ..backend import BaseBackend
from ..plugins import get_backend
from .conformance import BackendConformance
from .plugin import parse_backend_options, parse_unsupported


class TestSelectedBackend(BackendConformance):
    @pytest.fixture(autouse=True)
    def _unsupported_from_the_command_line(self, request: pytest.FixtureRequest) -> None:
        # Before each test's require(): --rhapsody-unsupported names the features to skip.
        type(self).unsupported = parse_unsupported(request.config.getoption("--rhapsody-unsupported"))

    def make_backend(self, request: pytest.FixtureRequest) -> BaseBackend:
        name = request.config.getoption("--rhapsody-backend", default=None)
        if not name:
            pytest.skip("no backend chosen: pass --rhapsody-backend=NAME")
        type(self).backend_name = name
        options = parse_backend_options(request.config.getoption("--rhapsody-backend-option"))
        return get_backend(name, **options)
