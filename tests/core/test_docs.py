"""The Python examples in README.md and docs/ run as written (blocks that need an engine other
than the core say so with a `pip install rhapsody-...` comment and are left to that engine's tests)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "getting-started.md", ROOT / "docs" / "writing-a-backend.md",
        ROOT / "docs" / "fault-tolerance.md"]


def runnable_blocks() -> list[tuple[str, str]]:
    blocks = []
    for doc in DOCS:
        for index, code in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)):
            if "asyncio.run(" in code and "pip install rhapsody-" not in code:
                blocks.append((f"{doc.name}#{index}", code))
    return blocks


@pytest.mark.parametrize(("where", "code"), runnable_blocks(), ids=[w for w, _ in runnable_blocks()])
def test_documented_example_runs(where: str, code: str, tmp_path: pathlib.Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"{where} printed nothing"


def test_readme_example_output() -> None:
    code = dict(runnable_blocks())["README.md#0"]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[1, 2, 4, 8, 16, 32, 64, 128, 256, 512] hello"


def test_wait_modes_example_output() -> None:
    code = next(c for w, c in runnable_blocks() if "risky" in c)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    assert lines[0] == "['DONE', 'DONE', 'DONE', 'FAILED', 'DONE', 'FAILED']"
    assert lines[1] == "task 3: bad input 3"
    assert lines[2] == "2 oops"


def test_fault_tolerance_examples_print_what_the_page_says() -> None:
    page = (ROOT / "docs" / "fault-tolerance.md").read_text()
    lost, flaky = (code for where, code in runnable_blocks() if where.startswith("fault-tolerance"))
    result = subprocess.run([sys.executable, "-c", lost], capture_output=True, text=True, timeout=120)
    printed = result.stdout.strip()
    assert printed and f"prints\n\n```\n{printed}\n```" in page, result.stderr
    result = subprocess.run([sys.executable, "-c", flaky], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "written after 2 retries", result.stderr
    assert "prints `written after 2 retries`" in page
