"""Plugins that use rhapsody while they are being imported, misspelt hooks, and the documented
example backend installed as a plugin: `rhapsody backends` never hangs and lists each as working
or failed with the reason.

Each case is a real distribution (a ``*.dist-info`` with ``entry_points.txt``) in a temporary
site directory, and the real command in a fresh process, bounded by a timeout: a deadlock fails
the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

BACKEND = '''
from rhapsody import BaseBackend, hookimpl

class {cls}(BaseBackend):
    name = "{name}"
    task_kinds = frozenset({{"function"}})
    async def submit_tasks(self, tasks):
        for task in tasks:
            task["return_value"] = task["function"](*task["args"], **task["kwargs"])
        self.report([(task, "DONE") for task in tasks])
    async def cancel_task(self, task):
        return False

@hookimpl
def rhapsody_register_backends():
    return [{cls}]
'''

MODULES = {
    # Uses what is already registered (the built-ins) while it is imported.
    "eager_mod": BACKEND.format(cls="Eager", name="eager") + '''
import rhapsody
BUILTIN = rhapsody.get_backend("concurrent")
SEEN = sorted(rhapsody.discover_backends())
SESSION = rhapsody.Session()
''',
    # Asks for its own backend, which cannot be registered before its module is imported.
    "selfish_mod": BACKEND.format(cls="Selfish", name="selfish") + '''
import rhapsody
rhapsody.get_backend("selfish")
''',
    # Another thread asks while plugins load: it waits, then sees every backend.
    "threaded_mod": BACKEND.format(cls="Threaded", name="threaded") + '''
import threading
import rhapsody
SEEN = []
ASKER = threading.Thread(target=lambda: SEEN.extend(sorted(rhapsody.discover_backends())))
ASKER.start()
''',
    "misspelt_mod": '''
from rhapsody import hookimpl

@hookimpl
def rhapsody_register_backend():
    return []
''',
}


def install(site: pathlib.Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = ["[rhapsody]"] + [f"{name} = {module}" for name, module in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def run(site: pathlib.Path, *args: str, load: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(site), RHAPSODY_LOAD_PLUGINS=load, COLUMNS="200")
    command = ["-c", code] if code is not None else ["-m", "rhapsody", *args]
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env,
                          timeout=60, cwd=site)


@pytest.fixture
def site(tmp_path: pathlib.Path) -> pathlib.Path:
    install(tmp_path, "rhapsody-reentry", {m.removesuffix("_mod"): m for m in MODULES}, MODULES)
    return tmp_path


def listed(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return {entry["name"]: entry for entry in json.loads(result.stdout)}


def test_plugin_using_rhapsody_at_import_does_not_hang(site: pathlib.Path) -> None:
    found = listed(run(site, "backends", "--json", load="eager"))
    assert found["eager"]["available"] is True
    assert found["concurrent"]["available"] is True


def test_plugin_sees_the_builtins_while_loading(site: pathlib.Path) -> None:
    result = run(site, load="eager", code=textwrap.dedent('''
        import rhapsody
        rhapsody.discover_backends()
        import eager_mod  # the module plugin loading imported, not a second import
        print(eager_mod.SEEN, type(eager_mod.BUILTIN).__name__, sorted(rhapsody.discover_backends()))
    '''))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['concurrent', 'noop'] ConcurrentBackend ['concurrent', 'eager', 'noop']"


def test_backend_not_yet_registered_names_plugins_still_loading(site: pathlib.Path) -> None:
    found = listed(run(site, "backends", "--json", load="selfish,eager"))
    reason = found["selfish"]["reason"]
    assert found["selfish"]["available"] is False
    assert reason.startswith("plugin failed to load: BackendUnavailableError: no backend named 'selfish' "
                             "is known yet: plugins are still loading (plugin 'selfish' asked for it "
                             "while being imported; known so far: concurrent, ")
    assert "must not use rhapsody at import time" in reason
    assert found["eager"]["available"] is True  # the others keep working


def test_other_threads_wait_for_loading_to_finish(site: pathlib.Path) -> None:
    result = run(site, load="threaded,eager", code=textwrap.dedent('''
        import rhapsody
        rhapsody.discover_backends()
        import threaded_mod
        threaded_mod.ASKER.join(30)
        print(threaded_mod.ASKER.is_alive(), threaded_mod.SEEN)
    '''))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False ['concurrent', 'eager', 'noop', 'threaded']"


def test_misspelt_hook_is_listed_as_failed_and_warned_about_once(site: pathlib.Path) -> None:
    table = run(site, "backends", load="misspelt,eager")
    assert table.returncode == 0, table.stderr
    assert table.stderr.count("RhapsodyPluginWarning") == 1, table.stderr
    assert "rhapsody plugin 'misspelt' left out: unknown hook 'rhapsody_register_backend'" in table.stderr
    row = next(line for line in table.stdout.splitlines() if "│ misspelt" in line)
    assert "no: plugin failed to load: unknown hook 'rhapsody_register_backend'" in row
    assert any("│ eager" in line and "yes" in line for line in table.stdout.splitlines())


def test_documented_backend_works_as_an_installed_plugin(tmp_path: pathlib.Path) -> None:
    doc = (ROOT / "docs" / "writing-a-backend.md").read_text()
    example = next(code for code in re.findall(r"```python\n(.*?)```", doc, re.S) if "class OneThreadBackend" in code)
    install(tmp_path, "rhapsody-mysite", {"mysite": "one_thread_backend"}, {"one_thread_backend": example})
    found = listed(run(tmp_path, "backends", "--json", load="mysite"))
    assert found["one-thread"]["available"] is True
    assert found["one-thread"]["distribution"] == "rhapsody-mysite"
    workload = tmp_path / "work.py"
    workload.write_text(textwrap.dedent('''
        from rhapsody import ComputeTask

        async def main(session):
            tasks = [ComputeTask(function=divmod, args=(17, n)) for n in (5, 3)]
            await session.submit_tasks(tasks)
            await session.wait_tasks(tasks)
            print("results:", [t.return_value for t in tasks])
    '''))
    result = run(tmp_path, "run", str(workload), "--backend", "one-thread", "--no-progress", load="mysite")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "results: [(3, 2), (5, 2)]" in result.stdout
