"""docs/records.md: every Python example runs as written and prints what the page says it prints
(the first example twice: the second run restores from the journal the first one wrote)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "records.md"


def examples() -> list[tuple[str, list[str]]]:
    """Each Python block with the text blocks after it (one per run), in page order."""
    found: list[tuple[str, list[str]]] = []
    for language, body in re.findall(r"```(\w*)\n(.*?)```", PAGE.read_text(), re.S):
        if language == "python":
            found.append((body, []))
        elif language == "text" and found:
            found[-1][1].append(body.strip())
    return found


@pytest.mark.parametrize("index", range(len(examples())))
def test_example_prints_what_the_page_says(index: int, tmp_path: pathlib.Path) -> None:
    code, outputs = examples()[index]
    assert outputs, f"example {index} says nothing about what it prints"
    if "opentelemetry" in code:
        pytest.importorskip("opentelemetry.sdk", reason="needs rhapsody-core[otel]")
    script = tmp_path / "example.py"
    script.write_text(code)
    for run, expected in enumerate(outputs):
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path, env=_env())
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected, f"run {run + 1}: {result.stderr}"


def _env() -> dict[str, str]:
    return {**os.environ, "RHAPSODY_LOAD_PLUGINS": ""}


def test_first_example_writes_the_three_files(tmp_path: pathlib.Path) -> None:
    code, _ = examples()[0]
    (tmp_path / "example.py").write_text(code)
    subprocess.run([sys.executable, "example.py"], check=True, capture_output=True, timeout=120,
                   cwd=tmp_path, env=_env())
    assert {"run.html", "run.jsonl", "run.journal"} <= {p.name for p in tmp_path.iterdir()}
    assert "square 3 (task." in (tmp_path / "run.html").read_text()
