"""The run report: one self-contained HTML file, written when the session closes.

``Session(records=[HtmlReport("run.html")])`` or ``rhapsody run W --report run.html``. The page
holds, for the tasks the session ran:

- counts per final state (and how many a journal restored), wall time and throughput;
- throughput over time: tasks ended per second, in up to 60 time bins;
- a task stream in the manner of Dask's: one lane per worker (where the backend names it in
  ``task.worker``) or per slot (tasks that overlap in time go to separate lanes of their
  backend), one bar per task from the time it started running (its ``RUNNING`` timing, else its
  submission) to its end, coloured by final state, a lighter lead-in for its time queued, and a
  tooltip with its name, uid and duration;
- the slowest tasks (submission to end);
- every failure with the end of its stderr or its exception (the last 2 000 characters).

The charts are inline SVG written by this module, with a few lines of CSS and no script: the
file opens offline in any browser, weighs kilobytes rather than the megabytes a plotting
library's inlined JavaScript would, and needs no dependency. The task stream draws at most
``max_bars`` tasks (a uniform random sample beyond that, said on the page) and at most
``_MAX_LANES`` lanes per backend (beyond that, bars share lanes and overlap).
"""

from __future__ import annotations

import heapq
import html
import os
import random
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from ..hookspecs import hookimpl
from ..states import TERMINAL_STATES, TaskState
from ..task import Task
from .timeline import failure_text, submitted, task_label

_SLOWEST = 10
_MAX_LANES = 100
_BINS = 60
_FINAL = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELED)  # colours: the CSS below
_WIDTH = 1000
_NO_TIMES: dict[str, float] = {}
_LANE = 14


class _Bar(NamedTuple):
    submitted: float
    began: float
    ended: float
    state: str
    backend: str
    worker: str | None
    label: str


class _Failure(NamedTuple):
    label: str
    state: str
    exit_code: int | None
    detail: str


class HtmlReport:
    """Collects what the report needs as tasks end; writes ``path`` when closed.

    Args:
        path: the HTML file to write (written over).
        title: the page's title.
        max_bars: the most tasks drawn in the task stream.

    Per task it keeps only its end time (8 bytes) beyond the sampled bars, the slowest few and
    the failures.

    Raises (on close): OSError: the file cannot be written.
    """

    def __init__(self, path: str | os.PathLike[str], *, title: str = "rhapsody run",
                 max_bars: int = 10_000) -> None:
        self.path = os.fspath(path)
        self.title = title
        self.max_bars = max_bars
        self.counts: Counter[str] = Counter()
        self.restored = 0
        self._ends = array("d")
        self._first: float | None = None
        self._bars: list[_Bar] = []
        self._seen = 0
        self._slowest: list[tuple[float, str]] = []
        self._failures: list[_Failure] = []
        self._random = random.Random(0)
        self._opened_at = time.time()
        self._open = False

    def open(self) -> None:
        """Start the run's clock."""
        self._opened_at = time.time()
        self._open = True

    def close(self) -> None:
        """Write the page (atomically: a reader never sees half of it). Idempotent."""
        if not self._open:
            return
        self._open = False
        self.write()

    @hookimpl
    def rhapsody_task_states_changed(self, tasks: Sequence[Task]) -> None:
        now = time.time()
        for task in tasks:
            state = task["state"]
            if state not in TERMINAL_STATES:
                if state == TaskState.SUBMITTED and self._first is None:
                    self._first = submitted(task) or now
                continue
            self._record(task, state, now)

    def _record(self, task: Task, state: str, now: float) -> None:
        # Per ended task: dict.get (fields at their default are not stored) and no string
        # built unless the task is kept (slowest, failed, or drawn).
        get = dict.get
        self.counts[state] += 1
        if get(task, "restored"):
            self.restored += 1
        stamps = get(task, "timings") or _NO_TIMES
        end = stamps.get(state, now)
        start = stamps.get(TaskState.SUBMITTED, end)
        self._ends.append(end)
        slowest = self._slowest
        if len(slowest) < _SLOWEST:
            heapq.heappush(slowest, (end - start, task_label(task)))
        elif end - start > slowest[0][0]:
            heapq.heapreplace(slowest, (end - start, task_label(task)))
        if state != TaskState.DONE:
            self._failures.append(
                _Failure(task_label(task), state, get(task, "exit_code"), failure_text(task)))
        # Reservoir sampling: every task has the same chance to be drawn.
        self._seen += 1
        slot = len(self._bars)
        if slot >= self.max_bars:
            slot = self._random.randrange(self._seen)
            if slot >= self.max_bars:
                return
        worker = get(task, "worker")
        bar = _Bar(start, stamps.get(TaskState.RUNNING, start), end, state, str(task["backend"]),
                   None if worker is None else str(worker), task_label(task))
        if slot == len(self._bars):
            self._bars.append(bar)
        else:
            self._bars[slot] = bar

    # -- the page ----------------------------------------------------------------------------

    def write(self) -> None:
        """Write the page now, with what has been recorded so far."""
        page = self.render()
        temporary = f"{self.path}.tmp{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(page)
        os.replace(temporary, self.path)

    def render(self) -> str:
        """The page as a string."""
        ended = sum(self.counts.values())
        start = self._first if self._first is not None else self._opened_at
        stop = max(self._ends) if self._ends else start
        wall = max(stop - start, 0.0)
        rate = ended / wall if wall > 0 else 0.0
        parts = [_HEAD.format(title=html.escape(self.title)),
                 f"<h1>{html.escape(self.title)}</h1>",
                 f"<p class=meta>written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; "
                 f"{ended} tasks ended in {wall:.3f} s ({rate:.1f} tasks/s)</p>",
                 self._counts_table(ended, wall, rate),
                 "<h2>Throughput</h2>", self._throughput(start, stop),
                 "<h2>Task stream</h2>", self._stream(start, stop),
                 "<h2>Slowest tasks</h2>", self._slowest_table(),
                 f"<h2>Failed and cancelled tasks ({len(self._failures)})</h2>", self._failures_list(),
                 "</body></html>\n"]
        return "\n".join(parts)

    def _counts_table(self, ended: int, wall: float, rate: float) -> str:
        cells = "".join(f"<td class=count id=count-{state}>{self.counts[state]}</td>"
                        for state in _FINAL)
        return ("<table class=counts><tr><th>DONE</th><th>FAILED</th><th>CANCELED</th>"
                "<th>restored</th><th>ended</th><th>wall time</th><th>throughput</th></tr>"
                f"<tr>{cells}<td id=count-restored>{self.restored}</td><td>{ended}</td>"
                f"<td>{wall:.3f} s</td><td>{rate:.1f} tasks/s</td></tr></table>")

    def _throughput(self, start: float, stop: float) -> str:
        if not self._ends:
            return "<p>No task ended.</p>"
        span = max(stop - start, 1e-6)
        bins = [0] * _BINS
        for end in self._ends:
            bins[min(int((end - start) / span * _BINS), _BINS - 1)] += 1
        width = span / _BINS
        peak = max(bins) / width
        height = 160
        bar_w = _WIDTH / _BINS
        rects = []
        for index, count in enumerate(bins):
            if not count:
                continue
            h = count / width / peak * (height - 20)
            rects.append(f'<rect class=tput x="{index * bar_w:.1f}" y="{height - h:.1f}" '
                         f'width="{bar_w - 1:.1f}" height="{h:.1f}"><title>{count} tasks ended in '
                         f'{index * width:.3f}–{(index + 1) * width:.3f} s</title></rect>')
        return (f'<svg id=throughput width="{_WIDTH}" height="{height + 20}">'
                f'<text x="2" y="12">peak {peak:.1f} tasks/s</text>{"".join(rects)}'
                f'<text x="0" y="{height + 16}">0 s</text>'
                f'<text x="{_WIDTH - 2}" y="{height + 16}" text-anchor="end">{span:.3f} s</text>'
                "</svg>")

    def _stream(self, start: float, stop: float) -> str:
        if not self._bars:
            return "<p>No task ended.</p>"
        lanes = _lanes(self._bars)
        span = max(stop - start, 1e-6)
        label_w = 180
        scale = (_WIDTH - label_w) / span
        height = len(lanes) * _LANE + 20
        out = [f'<svg id=stream width="{_WIDTH}" height="{height}">']
        for row, (name, bars) in enumerate(lanes):
            y = row * _LANE
            out.append(f'<text class=lane x="0" y="{y + _LANE - 3}">{html.escape(name)}</text>')
            for bar in bars:
                x_sub = label_w + (bar.submitted - start) * scale
                x_run = label_w + (bar.began - start) * scale
                x_end = label_w + (bar.ended - start) * scale
                if x_run - x_sub >= 1:
                    out.append(f'<rect class="queued {bar.state}" x="{x_sub:.1f}" y="{y + 2}" '
                               f'width="{x_run - x_sub:.1f}" height="{_LANE - 4}"/>')
                tip = (f"{bar.label}: {bar.state} after {bar.ended - bar.began:.3f} s running "
                       f"({bar.began - bar.submitted:.3f} s queued)")
                out.append(f'<rect class="task {bar.state}" x="{x_run:.1f}" y="{y + 1}" '
                           f'width="{max(x_end - x_run, 1.0):.1f}" height="{_LANE - 2}">'
                           f"<title>{html.escape(tip)}</title></rect>")
        out.append(f'<text x="{label_w}" y="{height - 4}">0 s</text>'
                   f'<text x="{_WIDTH - 2}" y="{height - 4}" text-anchor="end">{span:.3f} s</text>'
                   "</svg>")
        note = ""
        if self._seen > len(self._bars):
            note = f"<p class=meta>A random sample of {len(self._bars)} of {self._seen} tasks.</p>"
        legend = "".join(f'<span class="key {state}">{state}</span>' for state in _FINAL)
        return f"<p class=legend>{legend}</p>{note}" + "".join(out)

    def _slowest_table(self) -> str:
        if not self._slowest:
            return "<p>No task ended.</p>"
        rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{seconds:.3f}</td></tr>"
                       for seconds, label in sorted(self._slowest, reverse=True))
        return (f"<table id=slowest><tr><th>task</th><th>seconds, submitted to end</th></tr>"
                f"{rows}</table>")

    def _failures_list(self) -> str:
        if not self._failures:
            return "<p id=failures>None.</p>"
        items = []
        for failure in self._failures:
            code = "" if failure.exit_code is None else f", exit code {failure.exit_code}"
            items.append(f"<li class=failure><b>{html.escape(failure.label)}</b> "
                         f"{failure.state}{code}<pre>{html.escape(failure.detail)}</pre></li>")
        return f"<ul id=failures>{''.join(items)}</ul>"


def _lanes(bars: Sequence[_Bar]) -> list[tuple[str, list[_Bar]]]:
    """Bars grouped into named lanes: one per worker where known, else slots per backend."""
    by_worker: dict[tuple[str, str], list[_Bar]] = {}
    unplaced: dict[str, list[_Bar]] = {}
    for bar in bars:
        if bar.worker is not None:
            by_worker.setdefault((bar.backend, bar.worker), []).append(bar)
        else:
            unplaced.setdefault(bar.backend, []).append(bar)
    lanes: list[tuple[str, list[_Bar]]] = [
        (f"{backend} · {worker}", group) for (backend, worker), group in sorted(by_worker.items())]
    for backend, group in sorted(unplaced.items()):
        # Greedy interval packing: each bar goes to the first slot free when it starts, so the
        # number of slots is the most tasks of the backend running at one moment.
        group.sort(key=lambda bar: bar.began)
        free_at: list[float] = []
        slots: list[list[_Bar]] = []
        for bar in group:
            index = next((i for i, end in enumerate(free_at) if end <= bar.began), -1)
            if index < 0:
                if len(slots) < _MAX_LANES:
                    index = len(slots)
                    free_at.append(0.0)
                    slots.append([])
                else:
                    index = min(range(len(free_at)), key=free_at.__getitem__)
            free_at[index] = max(free_at[index], bar.ended)
            slots[index].append(bar)
        lanes.extend((f"{backend} · slot {number}", slot) for number, slot in enumerate(slots))
    return lanes


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
td:first-child {{ text-align: left; }}
svg text {{ font-size: 11px; fill: #444; }}
.meta {{ color: #666; }}
rect.tput {{ fill: #1f77b4; }}
rect.DONE, .key.DONE {{ fill: #2ca02c; background: #2ca02c; }}
rect.FAILED, .key.FAILED {{ fill: #d62728; background: #d62728; }}
rect.CANCELED, .key.CANCELED {{ fill: #8c8c8c; background: #8c8c8c; }}
rect.queued {{ opacity: .3; }}
.key {{ color: white; padding: 1px 6px; margin-right: 4px; }}
pre {{ background: #f6f6f6; padding: 4px; white-space: pre-wrap; max-height: 20em; overflow: auto; }}
</style></head><body>"""
