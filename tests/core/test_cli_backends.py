"""`rhapsody backends` at 80 columns (a pipe, a CI log): names are never cut, reasons never lose
their end. Runs the real command against a plugin installed into a temporary site directory."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

LONG_NAME = "probe_thirdparty_backend_with_long_name"
REASON = "ModuleNotFoundError: No module named 'probe_engine_with_a_rather_long_module_name_too'"

PLUGIN = f'''
from rhapsody import BaseBackend, hookimpl

class Probe(BaseBackend):
    name = "{LONG_NAME}"

    @classmethod
    def check_available(cls):
        import probe_engine_with_a_rather_long_module_name_too  # noqa: F401

    async def submit_tasks(self, tasks):
        pass

    async def cancel_task(self, task):
        return False

@hookimpl
def rhapsody_register_backends():
    return [Probe]
'''


def test_long_names_and_reasons_survive_80_columns(tmp_path: pathlib.Path) -> None:
    (tmp_path / "probe_plugin.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "rhapsody_probe_thirdparty-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rhapsody-probe-thirdparty\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[rhapsody]\nprobe = probe_plugin\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), RHAPSODY_LOAD_PLUGINS="probe", COLUMNS="80")
    result = subprocess.run([sys.executable, "-m", "rhapsody", "backends"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.stdout
    assert any(f"│ {LONG_NAME} │" in line for line in lines), result.stdout
    # The reason is folded over several lines of its cell; put the cell back together.
    cells = [line.split("│")[3] for line in lines if line.count("│") == 4]
    assert REASON.replace(" ", "") in "".join(cells).replace(" ", ""), result.stdout
    assert "noop" in result.stdout  # the other backends are still listed
