"""The core's conformance kit on a real Dragon runtime, functions on the worker pool (the default).

Executables go to the Batch, started with the first of them. The kit with functions on the Batch
too (``function_mode="batch"``) is test_conformance_batch.py, in a runtime of its own.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from dragon_support import DragonKit, runtime_missing

pytestmark = pytest.mark.skipif(bool(runtime_missing()), reason=runtime_missing() or "-")


class TestDragonPoolConformance(DragonKit):
    backend_options: ClassVar[dict[str, Any]] = {"disable_telemetry": True}
    many_tasks = 2000
