"""The examples in docs/backends/dragon.md and the rhapsody-dragon README run as written, on a real
Dragon runtime (each its own backend)."""

from __future__ import annotations

import os
import pathlib
import re
import tempfile

import pytest
from dragon_support import runtime_missing

pytestmark = pytest.mark.skipif(bool(runtime_missing()), reason=runtime_missing() or "-")

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "backends" / "dragon.md"
README = ROOT / "packages" / "rhapsody-dragon" / "README.md"


def _example(path: pathlib.Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)
    return next(block for block in blocks if "asyncio.run(main())" in block)


def test_the_dragon_page_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    example = _example(DOC)
    # A module name of its own: cloudpickle then ships the example's functions by value, as it
    # does for a user's __main__.
    exec(compile(example, str(DOC), "exec"), {"__name__": "dragon_doc_example"})  # noqa: S102
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4, lines
    assert [line.split()[1] for line in lines] == ["DONE"] * 4, lines
    assert lines[0].split()[2:] == ["49"] and lines[1].split()[2:] == ["42"], lines
    # /bin/pwd ran in the mkdtemp() directory the example made.
    assert lines[2].split()[-1].startswith(os.path.realpath(tempfile.gettempdir())), lines
    assert lines[3].endswith("hello from Dragon"), lines


def test_the_package_readme_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(_example(README), str(README), "exec"), {"__name__": "dragon_readme_example"})  # noqa: S102
    assert capsys.readouterr().out.splitlines() == [str([2**i for i in range(10)])]
