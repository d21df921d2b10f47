"""Fixtures for the rhapsody-radical tests: one real RADICAL-Pilot pilot on local.localhost per module.

Every RP session the tests create writes its client directory under a temporary directory and its
pilot sandbox under ~/radical.pilot.sandbox/<session id>; both are removed when the module ends.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The root conftest loads no installed plugin; these tests use the radical one.
os.environ["RHAPSODY_LOAD_PLUGINS"] = "radical"

rp = pytest.importorskip("radical.pilot", reason="radical.pilot is not installed")

from rhapsody_radical.pilot import (  # noqa: E402
    ensure_rp_environment,
    local_path,
    wait_for_session_processes,
)

PILOT_START_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def rp_pilot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An active 2-core local.localhost pilot in a session the test module owns."""
    ensure_rp_environment(activate_venv=True)
    base = tmp_path_factory.mktemp("rp-client")
    session = rp.Session(cfg={"base": str(base)})
    sandbox = scratch = None
    try:
        pmgr = rp.PilotManager(session=session)
        pilot = pmgr.submit_pilots(rp.PilotDescription(
            {"resource": "local.localhost", "cores": 2, "runtime": 30, "exit_on_error": False}))
        deadline = time.monotonic() + PILOT_START_TIMEOUT
        while pilot.state not in (rp.PMGR_ACTIVE, *rp.FINAL) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pilot.state == rp.PMGR_ACTIVE, f"the test pilot did not start: {pilot.state}"
        sandbox = local_path(pilot.session_sandbox)
        scratch = Path(pilot.resource_details["lfs_path"]) / session.uid  # the agent's /tmp/<sid>
        yield pilot
    finally:
        session.close(terminate=True, download=False)
        # The pilot's agent processes end with the session; they write into the sandbox on their
        # way out, so the sandbox is removed after they are gone.
        left = wait_for_session_processes(session.uid, 30)
        for path in (sandbox, scratch, Path(session.path)):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
    assert not left, f"processes of {session.uid} outlived it: {left}"
