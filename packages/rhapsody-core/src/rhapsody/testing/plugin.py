"""pytest plugin (entry point ``pytest11``): options to run the conformance kit on any backend.

``pytest --pyargs rhapsody.testing.suite --rhapsody-backend=NAME
[--rhapsody-backend-option KEY=VALUE ...]`` checks an installed backend without a test file.
VALUE is read as JSON when it parses (``2``, ``true``, ``{"a": 1}``), else taken as a string.
"""

from __future__ import annotations

import json
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rhapsody", "rhapsody backend conformance kit")
    group.addoption("--rhapsody-backend", default=None, metavar="NAME",
                    help="backend that rhapsody.testing.suite checks")
    group.addoption("--rhapsody-backend-option", action="append", default=[], metavar="KEY=VALUE",
                    help="option for that backend (repeatable; VALUE parsed as JSON if it can be)")


def pytest_configure(config: pytest.Config) -> None:
    # A typo in the backend's name or options is one usage error at start-up, not an error in
    # every test of the suite.
    name = config.getoption("--rhapsody-backend", default=None)
    options = parse_backend_options(config.getoption("--rhapsody-backend-option", default=[]) or [])
    if name:
        from ..plugins import get_backend  # here, so that merely installing rhapsody loads nothing

        try:
            get_backend(name, **options)
        except Exception as exc:
            raise pytest.UsageError(f"--rhapsody-backend={name}: {type(exc).__name__}: {exc}") from exc


def parse_backend_options(items: list[str]) -> dict[str, Any]:
    """Turn ``["n_workers=2", "name=x"]`` into ``{"n_workers": 2, "name": "x"}``.

    Raises:
        pytest.UsageError: an item without ``=``.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise pytest.UsageError(f"--rhapsody-backend-option expects KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options
