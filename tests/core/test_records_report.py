"""The HTML run report opened in a real headless Chromium: the rendered DOM holds the counts,
the task stream's bars and every failure, and the screenshot shows bars in the state colours.

Chromium is Debian's ``chromium`` (CI's .ci/run installs it); where it is absent the test skips
and says so. The browser runs with networking features off and a fresh profile: the page must
render from the file alone.
"""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import struct
import subprocess
import time
import zlib
from typing import Any

import pytest

from rhapsody import ComputeTask, Session
from rhapsody.records import HtmlReport

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed here (apt-get install -y chromium; CI installs it)")

DONE_RGB, FAILED_RGB, THROUGHPUT_RGB = (0x2C, 0xA0, 0x2C), (0xD6, 0x27, 0x28), (0x1F, 0x77, 0xB4)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def broken(message: str) -> None:
    raise RuntimeError(message)


def write_report(path: pathlib.Path) -> list[Any]:
    async def main() -> list[Any]:
        async with Session(records=[HtmlReport(path, title="browser check")]) as session:
            tasks = [ComputeTask(nap, args=(0.05 * (i % 6 + 1),), name=f"nap {i}") for i in range(12)]
            tasks.append(ComputeTask(executable="/bin/sh", name="on fire",
                                     arguments=["-c", "sleep 0.2; echo disk on fire >&2; exit 9"]))
            tasks.append(ComputeTask(broken, args=("the <model> diverged",)))
            await session.submit_tasks(tasks)
            return await session.wait_tasks(tasks)

    return asyncio.run(asyncio.wait_for(main(), 120))


def chromium(tmp_path: pathlib.Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_report_renders_in_headless_chromium(tmp_path: pathlib.Path) -> None:
    page = tmp_path / "run.html"
    tasks = write_report(page)
    assert [task.state for task in tasks].count("FAILED") == 2

    result = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "<title>browser check</title>" in dom
    assert '<td class="count" id="count-DONE">12</td>' in dom
    assert '<td class="count" id="count-FAILED">2</td>' in dom
    assert dom.count('<rect class="task DONE"') == 12 and dom.count('<rect class="task FAILED"') == 2
    assert 'class="lane"' in dom and "concurrent · slot 0" in dom
    assert "disk on fire" in dom and "the &lt;model&gt; diverged" in dom  # escaped, not markup
    assert "on fire (task." in dom and "nap 5 (task." in dom  # names shown
    assert '<table id="slowest">' in dom

    shot = tmp_path / "run.png"
    result = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1100,1600",
                      "--hide-scrollbars", page.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    width, height, pixels = read_png(shot.read_bytes())
    assert (width, height) == (1100, 1600)
    colours: dict[tuple[int, int, int], int] = {}
    for pixel in pixels:
        colours[pixel] = colours.get(pixel, 0) + 1
    # Painted, not only present in the DOM: bars of each state and the throughput chart.
    assert colours.get(DONE_RGB, 0) > 500, "no DONE bars painted"
    assert colours.get(FAILED_RGB, 0) > 50, "no FAILED bars painted"
    assert colours.get(THROUGHPUT_RGB, 0) > 200, "no throughput chart painted"


def read_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Pixels (RGB) of an 8-bit RGB or RGBA PNG, as Chromium writes screenshots."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat, header = 8, b"", b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
    channels = 3 if colour_type == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                nearest = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                line[i] = (line[i] + nearest) & 0xFF
        rows.append(line)
        previous = line
    pixels = [(row[x], row[x + 1], row[x + 2]) for row in rows for x in range(0, stride, channels)]
    return width, height, pixels
