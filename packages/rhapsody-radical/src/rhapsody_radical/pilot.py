"""Pilot start-up: the environment RP needs, the pilot description, and why a pilot failed.

RADICAL-Pilot starts helper programs (``radical-pilot-bridge``, ``radical-pilot-agent_0``) by name
and picks the pilot's Python from ``$VIRTUAL_ENV``. A venv that is used without being activated
therefore makes RP fail in ways that surface late or not at all (the client waits forever on a
pilot whose agent never started), so the backend checks and fixes that before it creates anything.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ._compat import pilot_description_fields

log = logging.getLogger("rhapsody_radical")

_TAIL_LINES = 15

# Keys the backend owns in every pilot description it submits.
#  exit_on_error=True makes RP interrupt the main thread when the pilot fails, which would tear
#  down the user's event loop; the backend reports pilot failures itself instead.
_FORCED_PILOT_KEYS = {"exit_on_error": False}


def ensure_rp_environment(*, activate_venv: bool) -> None:
    """Make RP's helper programs findable, as an activated venv would.

    When this interpreter runs from a venv whose ``bin`` is not on ``PATH`` (or ``VIRTUAL_ENV``
    names another one), ``activate_venv=True`` sets ``VIRTUAL_ENV`` and prepends the venv's
    ``bin`` to ``PATH`` in ``os.environ`` (RP's children inherit it).

    Raises:
        RuntimeError: ``radical-pilot-bridge`` cannot be found on ``PATH`` (after activating,
            when allowed); the message says how to fix it.
    """
    in_venv = sys.prefix != sys.base_prefix
    venv_bin = str(Path(sys.prefix) / "bin")
    needs_fix = in_venv and (
        os.environ.get("VIRTUAL_ENV") != sys.prefix
        or shutil.which("radical-pilot-bridge") != str(Path(venv_bin) / "radical-pilot-bridge")
    )
    if needs_fix and activate_venv and (Path(venv_bin) / "radical-pilot-bridge").exists():
        log.warning("activating the venv %s for RADICAL-Pilot (VIRTUAL_ENV, PATH)", sys.prefix)
        os.environ["VIRTUAL_ENV"] = sys.prefix
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    if shutil.which("radical-pilot-bridge") is None:
        hint = (f"activate the venv ({venv_bin}/activate)" if in_venv
                else "put the bin directory of the radical.pilot installation on PATH")
        raise RuntimeError(
            "RADICAL-Pilot's helper program radical-pilot-bridge is not on PATH, so no RP session "
            f"can start: {hint}"
        )
    if needs_fix and not activate_venv:
        raise RuntimeError(
            f"this Python runs from the venv {sys.prefix}, but VIRTUAL_ENV/PATH do not point to "
            "it; the pilot agent would start from another Python and never come up. Activate the "
            "venv, or pass activate_venv=True"
        )


def pilot_description(
    *,
    resource: str,
    cores: int | None,
    gpus: int | None,
    nodes: int | None,
    runtime: int,
    queue: str | None,
    project: str | None,
    access_schema: str | None,
    extra: Mapping[str, Any],
    rp: Any,
) -> Any:
    """Build and check the ``rp.PilotDescription`` for the backend's own pilot.

    Raises:
        ValueError: a key of ``extra`` that RP's pilot description does not have, a key the
            backend owns, or a description RP rejects (its message is kept).
        TypeError: a value of the wrong type for its key.
    """
    schema = pilot_description_fields(rp)
    for key, value in extra.items():
        if key not in schema:
            raise ValueError(
                f"radical backend: pilot_description has no field {key!r} "
                f"(RADICAL-Pilot's PilotDescription has: {', '.join(sorted(schema))})"
            )
        if key in _FORCED_PILOT_KEYS and value != _FORCED_PILOT_KEYS[key]:
            raise ValueError(
                f"radical backend: pilot_description[{key!r}] must stay "
                f"{_FORCED_PILOT_KEYS[key]!r}: with exit_on_error RP interrupts the main thread "
                "when the pilot fails; the backend fails its tasks with the pilot's reason instead"
            )
    described: dict[str, Any] = {"resource": resource, "runtime": runtime}
    if nodes is not None:
        described["nodes"] = nodes
    elif cores is not None:
        described["cores"] = cores
    elif "cores" not in extra and "nodes" not in extra:
        described["cores"] = os.cpu_count() or 1
    for key, value in (("gpus", gpus), ("queue", queue), ("project", project),
                       ("access_schema", access_schema)):
        if value is not None:
            described[key] = value
    for key, value in extra.items():
        if key in described:
            raise ValueError(f"radical backend: {key!r} is given both as an option and in pilot_description")
        described[key] = value
    described.update(_FORCED_PILOT_KEYS)
    return verified(rp.PilotDescription, described, "radical backend: bad pilot description")


def verified(description_class: Any, described: dict[str, Any], context: str) -> Any:
    """Build and verify an RP description; RP's complaint becomes TypeError/ValueError after ``context``."""
    try:
        return description_class(from_dict=described).verify()
    except TypeError as exc:
        raise TypeError(f"{context}: {exc}") from exc
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{context}: {exc}") from exc


def local_path(url: Any) -> Path | None:
    """The local directory behind an RP sandbox URL, or ``None`` when it is on another host."""
    if not url:
        return None
    parsed = urlparse(str(url))
    if parsed.scheme not in ("", "file") or parsed.hostname not in (None, "", "localhost"):
        return None
    return Path(parsed.path)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-_TAIL_LINES:])


def _launcher_error(session_dir: Path) -> str:
    """The last error the client-side pilot launcher logged, with its exception line."""
    found = ""
    for log_file in sorted(session_dir.glob("pmgr_launching.*.log")):
        try:
            lines = log_file.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for index, line in enumerate(lines):
            if " : ERROR " not in line:
                continue
            message = line.rsplit(" : ", 1)[-1].strip()
            # A traceback follows the entry; its last line is the exception.
            follow = [ln for ln in lines[index + 1:index + 60] if ln and not ln[0].isdigit()]
            exception = next((ln.strip() for ln in reversed(follow) if not ln.startswith(" ")), "")
            found = f"{message}: {exception}" if exception else message
    return found


def failure_reason(pilot: Any) -> str:
    """RP's own account of why ``pilot`` ended: its log, stderr, and the sandbox's error files."""
    parts = [f"pilot {pilot.uid} on {pilot.resource} is {pilot.state}"]
    session_path = getattr(pilot.session, "path", None)
    launcher = _launcher_error(Path(session_path)) if session_path else ""
    if launcher:
        parts.append(f"pilot launcher: {launcher}")
    for name in ("stderr", "stdout"):
        text = getattr(pilot, name, None)
        if text:
            parts.append(f"pilot {name}:\n" + "\n".join(str(text).strip().splitlines()[-_TAIL_LINES:]))
    entries = pilot.log or []
    if entries:
        parts.append("pilot log: " + "; ".join(str(entry) for entry in entries[-5:]))
    sandbox = local_path(pilot.pilot_sandbox)
    if sandbox is not None:
        for name in ("bootstrap_0.err", "agent_0.err", "bootstrap_0.out"):
            tail = _tail(sandbox / name)
            if tail:
                parts.append(f"{sandbox / name}:\n{tail}")
    elif pilot.pilot_sandbox:
        parts.append(f"see the pilot sandbox {pilot.pilot_sandbox}")
    return "\n".join(parts)


def task_files(rp_task: Any) -> str:
    """Where an RP task runs, and (on this host) the tail of what it wrote to stderr and stdout."""
    sandbox = local_path(rp_task.sandbox)
    if sandbox is None:
        return f"{rp_task.uid} sandbox: {rp_task.sandbox or 'not assigned yet'}"
    parts = [f"{rp_task.uid} sandbox: {sandbox}"]
    for stream in ("err", "out"):
        tail = _tail(sandbox / f"{rp_task.uid}.{stream}")
        if tail:
            parts.append(f"{rp_task.uid}.{stream}:\n{tail}")
    return "\n".join(parts)


def session_processes(session_id: str, pilot_id: str | None = None) -> list[int]:
    """Live processes of an RP session (or of one of its pilots) on this host.

    They are found by the session id in their command line (bootstrap, bridges) or environment
    (agent components: ``RP_PILOT_SANDBOX`` holds ``.../<session id>/<pilot id>/``), since they are
    re-parented and no longer children of the client. Linux only (/proc); elsewhere ``[]``.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    marker = (f"{session_id}/{pilot_id}/" if pilot_id else session_id).encode()
    own = os.getpid()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            if (entry / "stat").read_bytes().rsplit(b") ", 1)[-1][:1] == b"Z":
                continue  # exited, waiting to be reaped: holds nothing
            if marker in (entry / "cmdline").read_bytes() or marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_for_session_processes(session_id: str, timeout: float, pilot_id: str | None = None) -> list[int]:
    """Wait until :func:`session_processes` finds none; return those still alive at ``timeout``.

    The pilot's bootstrap and agent write their last files (profiles, logs) into the sandbox on
    their way out, so a sandbox removed before they end comes back.
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = session_processes(session_id, pilot_id)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


def remove_tree(path: Path | None) -> None:
    """Delete a sandbox directory; a missing one is fine."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


class PilotSize:
    """What one task may ask of a pilot, from RP's ``resource_details`` of the active pilot.

    RP's agent fails a task that can never be placed only while nothing else runs in the pilot;
    with anything running (the Raptor master and workers always are) such a task waits forever.
    This check refuses it up front instead.
    """

    def __init__(self, details: Mapping[str, Any], reserved_cores: int) -> None:
        nodes = details.get("node_list") or []
        self.nodes = max(1, len(nodes))
        self.cores_per_node = int(details.get("cores_per_node") or 0)
        self.gpus_per_node = int(details.get("gpus_per_node") or 0)
        self.mem_per_node = int(details.get("mem_per_node") or 0)
        self.lfs_per_node = int(details.get("lfs_per_node") or 0)
        # Cores taken for good by the backend's own Raptor tasks, counted on the first node(s).
        self.free_cores = [self.cores_per_node] * self.nodes
        for index in range(self.nodes):
            taken = min(reserved_cores, self.free_cores[index])
            self.free_cores[index] -= taken
            reserved_cores -= taken

    def __str__(self) -> str:
        return (f"{self.nodes} node(s) x {self.cores_per_node} cores, {self.gpus_per_node} GPUs"
                f"{f', {self.mem_per_node} MB memory' if self.mem_per_node else ''} per node; "
                f"{sum(self.free_cores)} cores free of the backend's Raptor")

    def refuse(self, description: Mapping[str, Any]) -> str | None:
        """Why the described task can never run in this pilot, or ``None`` when it can."""
        if not self.cores_per_node:
            return None  # RP did not report the pilot's size: nothing to check against
        ranks = int(description.get("ranks") or 1)
        cores = int(description.get("cores_per_rank") or 1)
        gpus = float(description.get("gpus_per_rank") or 0)
        mem = int(description.get("mem_per_rank") or 0)
        lfs = int(description.get("lfs_per_rank") or 0)
        per_node_cap = description.get("ranks_per_node")
        if cores > self.cores_per_node:
            return f"cores_per_rank={cores} exceeds the {self.cores_per_node} cores of a node"
        if gpus > self.gpus_per_node:
            return f"gpus_per_rank={gpus:g} exceeds the {self.gpus_per_node} GPUs of a node"
        if mem and self.mem_per_node and mem > self.mem_per_node:
            return f"mem_per_rank={mem} exceeds the {self.mem_per_node} MB of a node"
        if lfs and self.lfs_per_node and lfs > self.lfs_per_node:
            return f"lfs_per_rank={lfs} exceeds the {self.lfs_per_node} MB of local disk of a node"
        fit = 0
        for free in self.free_cores:
            here = free // cores
            if gpus:
                here = min(here, int(self.gpus_per_node // gpus))
            if per_node_cap:
                here = min(here, int(per_node_cap))
            fit += here
        if ranks > fit:
            return (f"ranks={ranks} x cores_per_rank={cores}"
                    f"{f' x gpus_per_rank={gpus:g}' if gpus else ''} needs more than the pilot "
                    f"has: at most {fit} such ranks fit")
        return None
