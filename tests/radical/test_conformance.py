"""rhapsody-radical passes the core's conformance kit on a real local RADICAL-Pilot pilot.

The backend attaches to the module's pilot (``pilot=``), so the kit's two backends (the shared one
and the one its close test starts) run in one pilot; each brings its own TaskManager and Raptor.
"""

from __future__ import annotations

import pytest

from rhapsody.backend import BaseBackend
from rhapsody.testing import BackendConformance
from rhapsody_radical import RadicalBackend


class TestRadicalConformance(BackendConformance):
    backend_name = "radical"
    # Pilot start-up and RP's pipeline are slow on a loaded 2-core machine: generous per-test bound.
    task_timeout = 300.0
    many_tasks = 100
    # The local pilot has 8 (virtual) cores, 2 of them used by Raptor: 16 two-second sleeps keep
    # the next task queued for several seconds.
    queue_fill = 16
    unsupported = {
        "orphans": "RP launches the program itself and leaves whatever the program started in "
                   "the background once it has exited",
    }

    def make_backend(self, request: pytest.FixtureRequest) -> BaseBackend:
        return RadicalBackend(pilot=request.getfixturevalue("rp_pilot"))
