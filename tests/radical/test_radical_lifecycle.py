"""The backend's own RP session and pilot: start-up, failures with RP's reason, clean shutdown.

This module starts its own pilots (the backend creates them); no module-wide pilot is used.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import rhapsody
from rhapsody import ComputeTask, Session
from rhapsody_radical import RadicalBackend
from rhapsody_radical.pilot import ensure_rp_environment, session_processes

rp = pytest.importorskip("radical.pilot")

SANDBOX_ROOT = Path.home() / "radical.pilot.sandbox"


def _rp_processes(session_id: str) -> list[int]:
    return session_processes(session_id)


def _until_no_rp_processes(session_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _rp_processes(session_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _rp_processes(session_id), "RP processes outlived the backend"


def _sessions() -> set[str]:
    return {p.name for p in SANDBOX_ROOT.glob("rp.session.*")} if SANDBOX_ROOT.exists() else set()


def test_own_session_runs_and_cleans_up(tmp_path: Path) -> None:
    before = _sessions()

    async def body() -> tuple[Any, float]:
        started = time.monotonic()
        backend = rhapsody.get_backend("radical", cores=2, session_dir=str(tmp_path), cleanup=True)
        async with Session(backends=[backend]) as session:
            startup = time.monotonic() - started
            assert backend.pilot.state == rp.PMGR_ACTIVE
            assert Path(backend.session.path).parent == tmp_path.resolve()
            tasks = [ComputeTask(executable="/bin/echo", arguments=["own"]),
                     ComputeTask(function=sum, args=([1, 2, 3],)),
                     ComputeTask(executable="/bin/sleep", arguments=["300"])]
            await session.submit_tasks(tasks)
            await session.wait_tasks(tasks[:2])
            assert [t.state for t in tasks[:2]] == ["DONE", "DONE"]
            assert (tasks[0].stdout, tasks[1].return_value) == ("own\n", 6)
            assert _rp_processes(backend.session.uid), "the pilot's processes should be running"
            scratch = Path(backend.pilot.resource_details["lfs_path"]) / backend.session.uid
        # Closing cancelled the sleeper, closed the session, and removed what RP wrote.
        assert tasks[2].state == "CANCELED"
        return backend, startup, scratch

    backend, startup, scratch = asyncio.run(asyncio.wait_for(body(), 400))
    print(f"pilot start-up (session + pilot active): {startup:.1f} s")
    # RP stops updating the Pilot object once its session is closed: the processes tell.
    assert backend.session._closed
    _until_no_rp_processes(backend.session.uid)
    # Checked once the pilot's processes are gone: they could otherwise write the sandbox anew.
    assert _sessions() == before, "the session sandbox was not removed"
    assert list(tmp_path.iterdir()) == [], "the client session directory was not removed"
    assert not scratch.exists(), f"the agent's scratch directory {scratch} was not removed"


def test_failed_pilot_fails_initialisation_with_rps_reason(tmp_path: Path) -> None:
    # The launcher cannot create this sandbox: RP marks the pilot FAILED and logs why.
    backend = RadicalBackend(cores=1, raptor_workers=0, session_dir=str(tmp_path), cleanup=True,
                             pilot_description={"sandbox": "/proc/rhapsody-no-such-dir"})
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the pilot failed to start") as caught:
        asyncio.run(asyncio.wait_for(backend._ensure_initialized(), 300))
    assert "FAILED" in str(caught.value)
    assert "No such file or directory: '/proc/rhapsody-no-such-dir'" in str(caught.value)
    assert time.monotonic() - started < 300
    assert backend.session._closed
    _until_no_rp_processes(backend.session.uid)


def test_startup_timeout_is_a_bounded_error(tmp_path: Path) -> None:
    backend = RadicalBackend(cores=1, raptor_workers=0, startup_timeout=0.5,
                             session_dir=str(tmp_path), cleanup=True)
    with pytest.raises(TimeoutError, match=r"was not active after 0.5 s \(state "):
        asyncio.run(asyncio.wait_for(backend._ensure_initialized(), 300))
    assert backend.session._closed
    # The pilot was still starting: its bootstrap and agent must not outlive the backend.
    _until_no_rp_processes(backend.session.uid)


def test_unknown_resource_is_rps_error(tmp_path: Path) -> None:
    backend = RadicalBackend(resource="local.rhapsody-no-such-resource", session_dir=str(tmp_path),
                             cleanup=True)
    with pytest.raises(RuntimeError, match="rhapsody-no-such-resource"):
        asyncio.run(asyncio.wait_for(backend._ensure_initialized(), 120))


# -- options and environment: no pilot needed --------------------------------------------------

@pytest.mark.parametrize(("options", "error", "match"), [
    ({"pilot_description": {"rhapsody_bogus": 1}}, ValueError, "pilot_description has no field 'rhapsody_bogus'"),
    ({"pilot_description": {"exit_on_error": True}}, ValueError, "exit_on_error"),
    ({"cores": 2, "pilot_description": {"cores": 4}}, ValueError, "'cores' is given both"),
    ({"runtime": "long"}, TypeError, "runtime"),
])
def test_bad_pilot_description_fails_initialisation(
    tmp_path: Path, options: dict[str, Any], error: type, match: str
) -> None:
    backend = RadicalBackend(session_dir=str(tmp_path), **options)
    with pytest.raises(error, match=match):
        asyncio.run(asyncio.wait_for(backend._ensure_initialized(), 60))
    assert backend.session is None  # refused before any RP session was created


@pytest.mark.parametrize(("options", "match"), [
    ({"pilot": object(), "cores": 4}, "cores cannot be applied"),
    ({"pilot": object(), "session": object()}, "session cannot be applied"),
    ({"session": object(), "session_dir": "/tmp"}, "session_dir= only applies"),
    ({"raptor_workers": -1}, "raptor_workers must be an integer >= 0"),
    ({"startup_timeout": 0}, "startup_timeout must be > 0"),
])
def test_bad_backend_options_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RadicalBackend(**options)


def test_name_is_the_instance_name_in_a_session() -> None:
    # Two pilots in one session, by name; nothing starts until the backend is awaited.
    from rhapsody import Session, get_backend

    a = get_backend("radical", name="pilot-a", cores=1)
    b = RadicalBackend(name="pilot-b", cores=1)
    assert (a.name, b.name, RadicalBackend.name) == ("pilot-a", "pilot-b", "radical")
    assert set(Session(backends=[a, b]).backends) == {"pilot-a", "pilot-b"}


def test_attach_objects_are_type_checked() -> None:
    backend = RadicalBackend(pilot="pilot.0000")
    with pytest.raises(TypeError, match="pilot= must be an rp.Pilot"):
        asyncio.run(backend._ensure_initialized())


def test_unactivated_venv_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("not running in a venv")
    venv_bin = str(Path(sys.prefix) / "bin")
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(RuntimeError, match="radical-pilot-bridge is not on PATH"):
        ensure_rp_environment(activate_venv=False)
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")
    with pytest.raises(RuntimeError, match="Activate the venv, or pass activate_venv=True"):
        ensure_rp_environment(activate_venv=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    ensure_rp_environment(activate_venv=True)
    assert os.environ["VIRTUAL_ENV"] == sys.prefix
    assert os.environ["PATH"].split(os.pathsep)[0] == str(Path(sys.prefix) / "bin")


def test_import_does_not_import_the_engine() -> None:
    code = "import sys, rhapsody_radical; assert 'radical.pilot' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
