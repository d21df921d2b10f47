"""The core's conformance kit on a real Dragon runtime, functions on the Batch (``function_mode="batch"``)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from dragon_support import DragonKit, runtime_missing

pytestmark = pytest.mark.skipif(bool(runtime_missing()), reason=runtime_missing() or "-")


class TestDragonBatchConformance(DragonKit):
    backend_options: ClassVar[dict[str, Any]] = {"function_mode": "batch", "disable_telemetry": True}
    # Batch runs about 3-5 no-op tasks/s on a 2-core machine: keep the count modest.
    many_tasks = 40
    # The lost task itself fails with WorkerLostError (tests/dragon/test_worker_loss.py), but
    # dragonhpc 0.15's Batch runs nothing after a worker death: the kit's other tasks cannot pass.
    unsupported: ClassVar[dict[str, str]] = {
        "worker_loss": "a Dragon Batch runs no task once one of its workers has died",
    }
