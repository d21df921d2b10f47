"""Owned mode, the owning process killed by a signal (``kill -9``, the OOM killer, the end of a
batch job): ``atexit`` never runs, yet the server and its engine processes must not survive it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from vllm_support import ENGINE_MISSING, TINY_ENGINE_OPTIONS, group_gone

from rhapsody_vllm.server import group_members

pytestmark = pytest.mark.skipif(ENGINE_MISSING is not None, reason=ENGINE_MISSING or "")

OWNER = textwrap.dedent("""
    import asyncio, json, sys
    from rhapsody import AITask, Session
    from rhapsody_vllm import VLLMBackend

    async def main() -> None:
        backend = VLLMBackend(model=sys.argv[1], served_model_name="tiny", **json.loads(sys.argv[2]))
        async with Session(backends=[backend]) as session:
            task = AITask("hello", max_tokens=2)
            await session.submit_tasks([task])
            await session.wait_tasks([task], timeout=120)
            print(backend.server.pid, task.state, flush=True)
            await asyncio.sleep(3600)  # killed long before this ends

    if __name__ == "__main__":
        asyncio.run(main())
""")


def test_server_group_ends_when_its_owner_is_killed(tiny_model: Path, tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen(
        [sys.executable, str(script), str(tiny_model), json.dumps(TINY_ENGINE_OPTIONS)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    pgid = None
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()  # the owner prints once its server answered a task
        assert line, f"the owner exited with status {owner.wait()} before its server was ready"
        pid, state = line.split()
        pgid = int(pid)
        assert state == "DONE"
        assert len(group_members(pgid)) >= 2  # the API server and its engine core
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=30)
        assert asyncio.run(group_gone(pgid, within=90)) == [], "the vLLM server outlived its killed owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if pgid is not None and group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
