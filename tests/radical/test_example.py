"""examples/radical_quickstart.py runs as documented (its own local pilot, cleaned up)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("radical.pilot")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "radical_quickstart.py"


def test_quickstart_example(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # Files, not pipes: RP's re-parented helpers inherit the descriptors, and a pipe would stay
    # open after the example itself has exited.
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        done = subprocess.run([sys.executable, str(EXAMPLE)], cwd=run_dir, stdout=stdout,
                              stderr=stderr, timeout=400, env=dict(os.environ))
    text = out.read_text()
    assert done.returncode == 0, err.read_text()[-3000:]
    lines = text.splitlines()
    assert any(line.endswith("DONE hello from the pilot") for line in lines), text
    assert any(line.endswith("DONE hi with 2 cores") for line in lines), text
    assert any(line.endswith("DONE 144") for line in lines), text
    assert any(line.endswith("DONE 2.5") for line in lines), text
    assert "raised as expected: no values" in lines
    # cleanup=True: no client session directory is left where it ran
    assert not list(run_dir.glob("rp.session.*"))
