"""Small module-level functions the conformance kit runs as tasks.

They live in an importable module (not in a test file) so that every backend can ship them to
its workers by reference, whatever serializer it uses.
"""

from __future__ import annotations

import asyncio
import os
import time


class KitError(Exception):
    """The exception ``fail`` raises; a backend must deliver it with this exact type."""


def add(a: int, b: int) -> int:
    return a + b


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise KitError(message)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def process_id() -> int:
    return os.getpid()


def end_own_process(code: int) -> None:
    """End the process that runs this task at once, as a crash in C code or the OOM killer would."""
    os._exit(code)


def end_own_process_once(marker: str, code: int) -> str:
    """End this process the first time (when ``marker`` does not exist yet); return on the next run."""
    if not os.path.exists(marker):
        with open(marker, "w") as file:
            file.write(str(os.getpid()))
        os._exit(code)
    return "survived"
