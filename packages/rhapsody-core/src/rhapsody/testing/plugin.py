"""pytest plugin (entry point ``pytest11``): options to run the conformance kit on any backend.

``pytest --pyargs rhapsody.testing.suite --rhapsody-backend=NAME
[--rhapsody-backend-option KEY=VALUE ...] [--rhapsody-unsupported=FEATURE,FEATURE]`` checks an
installed backend without a test file. VALUE is read as JSON when it parses (``2``, ``true``,
``{"a": 1}``), else taken as a string. The tests of the features named by
``--rhapsody-unsupported`` (names in ``rhapsody.testing.FEATURES``) are skipped, saying so.
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
    group.addoption("--rhapsody-unsupported", action="append", default=[], metavar="FEATURE,...",
                    help="conformance features that backend lacks, comma-separated (repeatable): "
                         "their tests are skipped")


def pytest_configure(config: pytest.Config) -> None:
    # A typo in the backend's name or options is one usage error at start-up, not an error in
    # every test of the suite.
    name = config.getoption("--rhapsody-backend", default=None)
    options = parse_backend_options(config.getoption("--rhapsody-backend-option", default=[]) or [])
    parse_unsupported(config.getoption("--rhapsody-unsupported", default=[]) or [])
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


UNSUPPORTED_REASON = "declared unsupported with --rhapsody-unsupported"


def parse_unsupported(items: list[str]) -> dict[str, str]:
    """Turn ``["cwd,env", "shell"]`` into ``{"cwd": reason, "env": reason, "shell": reason}``.

    Raises:
        pytest.UsageError: a name that is not a conformance feature (the message lists them).
    """
    from .conformance import FEATURES

    names = [name.strip() for item in items for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in FEATURES]
    if unknown:
        raise pytest.UsageError(
            f"--rhapsody-unsupported: unknown feature {', '.join(repr(n) for n in unknown)}; "
            f"the features are: {', '.join(sorted(FEATURES))}"
        )
    return dict.fromkeys(names, UNSUPPORTED_REASON)
