"""The cost of run records on the noop benchmark, against the raw floor, in one process.

    python benchmarks/bench_records.py            # 100K tasks per round
    python benchmarks/bench_records.py --quick    # 10K, for a smoke run

Each line prints µs per task end to end (create -> submit -> done -> future resolved) through a
noop session, and the same for bare asyncio futures (bench_core's floor), and their ratio:

- records off: Session() as bench_core measures it (target <= 2x);
- timings: Session(records=[Timeline()]), task.timings stamped once per hand-over (target <= 2x);
- event log, HTML report, journal, each alone, and all three together (files in a temporary
  folder; not targets: they write per task, and say what that costs);
- OpenTelemetry spans through the SDK with no exporter, where rhapsody-core[otel] is installed.

Rounds are interleaved (floor, then each variant) and the best of each is kept, so load from
other processes hits every line alike.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from bench_core import floor_futures, line, noop_tasks

from rhapsody.records import EventLog, HtmlReport, Journal, Timeline

TARGETED = ("records off", "timings (Timeline)")


def variants(folder: str) -> dict[str, Callable[[int], list[Any]]]:
    found: dict[str, Callable[[int], list[Any]]] = {
        "records off": lambda _: [],
        "timings (Timeline)": lambda _: [Timeline()],
        "event log": lambda r: [EventLog(os.path.join(folder, f"e{r}.jsonl"))],
        "HTML report": lambda r: [HtmlReport(os.path.join(folder, f"r{r}.html"))],
        # A fresh journal each round: a second round on one file would restore every task.
        "journal": lambda r: [Journal(os.path.join(folder, f"j{r}.journal"))],
        "event log + report + journal": lambda r: [
            EventLog(os.path.join(folder, f"ae{r}.jsonl")),
            HtmlReport(os.path.join(folder, f"ar{r}.html")),
            Journal(os.path.join(folder, f"aj{r}.journal"))],
    }
    try:
        from opentelemetry.sdk.trace import TracerProvider

        from rhapsody.records import OtelSpans
    except ImportError:
        print("(OpenTelemetry not installed: no otel line; pip install 'rhapsody-core[otel]')")
    else:
        found["OTel spans (SDK, no exporter)"] = lambda _: [OtelSpans(tracer_provider=TracerProvider())]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10K tasks per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = 10_000 if args.quick else 100_000
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {n} noop tasks per round, "
          f"best of {args.rounds}")
    with tempfile.TemporaryDirectory() as folder:
        chosen = variants(folder)
        best: dict[str, float] = {}
        floors = []
        for index in range(args.rounds):
            gc.collect()
            floors.append(asyncio.run(floor_futures(n)))
            for label, make in chosen.items():
                gc.collect()
                took = asyncio.run(noop_tasks(n, make(index)))
                best[label] = min(best.get(label, took), took)
        floor = min(floors)
        for label, ours in best.items():
            if label in TARGETED:
                line(f"noop, {label}", ours, floor, "µs", 2.0)
            else:
                print(f"noop, {label:<29} rhapsody {ours:10.3f} µs       raw {floor:10.3f} µs       "
                      f"ratio {ours / floor:5.2f}  (no target)", flush=True)


if __name__ == "__main__":
    main()
