"""The core's conformance kit on a real Dragon runtime (one Batch shared by the class)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from dragon_support import WORKERS, runtime_missing

from rhapsody.testing import BackendConformance

pytestmark = pytest.mark.skipif(bool(runtime_missing()), reason=runtime_missing() or "-")


class TestDragonConformance(BackendConformance):
    backend_name = "dragon"
    backend_options: ClassVar[dict[str, Any]] = {"disable_telemetry": True}
    # Batch runs about 3-5 no-op tasks/s on a 2-core machine: keep the counts modest.
    many_tasks = 40
    queue_fill = 2 * WORKERS + 1
    task_timeout = 180.0
    # A second Batch beside the shared one brought the whole Dragon runtime down ("fatal
    # exception") in CI runs on 2 cores; the close test closes the shared one instead.
    close_shared_session = True
    # The lost task itself fails with WorkerLostError (tests/dragon/test_worker_loss.py), but
    # dragonhpc 0.15's Batch runs nothing after a worker death: the kit's other tasks cannot pass.
    unsupported: ClassVar[dict[str, str]] = {
        "worker_loss": "a Dragon Batch runs no task once one of its workers has died",
    }

    def executable_options(self, *, cwd: str | None = None, env: dict[str, str] | None = None,
                           shell: bool | None = None) -> dict[str, Any]:
        # On Dragon, cwd and env belong to the process template.
        options: dict[str, Any] = {}
        template = {key: value for key, value in (("cwd", cwd), ("env", env)) if value is not None}
        if template:
            options["process_template"] = template
        if shell is not None:
            options["shell"] = shell
        return options
