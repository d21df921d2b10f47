"""rhapsody_dragon.leftovers: which directories a starting client removes (no runtime needed)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from rhapsody.builtin.worker_markers import exit_status
from rhapsody_dragon.leftovers import prefix, remove_stale


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_only_the_directories_of_dead_clients_on_this_host_are_removed(tmp_path: Path) -> None:
    host, dead = socket.gethostname(), _dead_pid()
    stale = tmp_path / f"rhapsody-dragon-{host}-{dead}-abc123"
    kept = [
        tmp_path / f"{prefix()}abc123",  # this process: alive
        tmp_path / f"rhapsody-dragon-another-host-{dead}-abc123",  # another node's
        tmp_path / "rhapsody-dragon-hcz84kut",  # not named after a client (an older release's)
        tmp_path / f"rhapsody-dragon-{host}-notapid-abc123",
    ]
    for path in (stale, *kept):
        path.mkdir()
        (path / "slot-0").write_bytes(b"\0" * 24)
    a_file = tmp_path / f"rhapsody-dragon-{host}-{dead}-file"
    a_file.write_text("not a directory")

    assert remove_stale(tmp_path) == [stale]
    assert not stale.exists()
    assert all(path.is_dir() for path in kept) and a_file.exists()


def test_the_prefix_names_this_host_and_process() -> None:
    assert prefix() == f"rhapsody-dragon-{socket.gethostname()}-{os.getpid()}-"


def test_a_base_that_does_not_exist_removes_nothing(tmp_path: Path) -> None:
    assert remove_stale(tmp_path / "missing") == []


def test_a_client_killed_and_not_yet_reaped_counts_as_gone(tmp_path: Path) -> None:
    process = subprocess.Popen(["true"])  # a zombie once it exits, until waited for
    try:
        for _ in range(100):
            if exit_status(process.pid)[0]:
                break
            time.sleep(0.05)
        assert exit_status(process.pid)[0]
        stale = tmp_path / f"rhapsody-dragon-{socket.gethostname()}-{process.pid}-abc123"
        stale.mkdir()
        assert remove_stale(tmp_path) == [stale]
    finally:
        process.wait()
