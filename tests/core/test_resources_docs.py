"""docs/resources.md: its Python example runs as written and prints what the page says it prints."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "resources.md"


def test_the_example_prints_what_the_page_says() -> None:
    text = PAGE.read_text()
    [code] = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "asyncio.run(" in block]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "RHAPSODY_LOAD_PLUGINS": ""}, check=False)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert printed and f"prints\n\n```\n{printed}\n```" in text, printed


def test_the_fragment_is_a_valid_request() -> None:
    from rhapsody import ComputeTask, Resources
    from rhapsody.resources import resources_of

    fragment = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)[0]
    task = eval(fragment, {"ComputeTask": ComputeTask})  # the page's first block is one expression
    assert resources_of(task) == Resources(ranks=4, cores_per_rank=2, gpus_per_rank=1, memory_per_rank=2048)
    assert resources_of(task).cores == 8  # type: ignore[union-attr]
