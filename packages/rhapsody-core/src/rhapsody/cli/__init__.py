"""The ``rhapsody`` command line.

``rhapsody run WORKLOAD`` runs a workload with a live progress bar and a summary; its exit status
is 0 when every task ended DONE, 1 when any failed or was cancelled or ``--timeout`` passed, 2 when
the workload or the backend could not be used, 130 when interrupted (Ctrl-C). ``rhapsody backends``
lists the backends installed here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import pathlib
import sys
import traceback
from collections.abc import Coroutine, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import BackendUnavailableError
from ..plugins import discover_backends, get_backend, register_plugin, unregister_plugin
from ..session import Session
from .report import RunReport, make_progress
from .stopping import INTERRUPTED, RunStopper
from .workload import WorkloadError, load_workload

_WORKLOAD_CANCEL_GRACE = 5.0  # seconds a cancelled workload gets to unwind before the session closes


def _option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive, finite number of seconds, got {text!r}")
    return value


_RUN_EPILOG = """\
exit status:
  0    every task ended DONE
  1    a task failed or was cancelled, or --timeout passed
  2    the workload or the backend could not be used, or the workload raised
  130  interrupted (Ctrl-C)
"""


def _parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        own_version = version("rhapsody-core")
    except PackageNotFoundError:
        own_version = "unknown"
    # Help text is written for a terminal, not taken from the docstrings (their RST markup would
    # show as is).
    parser = argparse.ArgumentParser(
        prog="rhapsody",
        description="Run workloads of tasks on a rhapsody backend, and list the installed backends.",
    )
    parser.add_argument("--version", action="version", version=f"rhapsody {own_version}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="run a workload (a .py file or a .yaml/.json list of executable tasks)",
        description="Run a workload with a live progress bar, then print a summary.",
        epilog=_RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("workload", type=pathlib.Path,
                     help="a .py file defining 'async def main(session)', or a .yaml/.yml/.json "
                          "list of executable tasks")
    run.add_argument("-b", "--backend", default="concurrent", help="backend name (default: concurrent)")
    run.add_argument("-o", "--option", dest="options", action="append", type=_option, default=[],
                     metavar="KEY=VALUE",
                     help="backend option, repeatable; VALUE is read as JSON when it parses "
                          "(concurrent: processes=N for CPU-bound Python, max_workers=N threads)")
    run.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                     help="give up (cancel what still runs) after this many seconds (> 0)")
    run.add_argument("--no-progress", action="store_true", help="no live progress bar")
    run.add_argument("--report", type=pathlib.Path, metavar="FILE.html",
                     help="write a self-contained HTML report of the run (see docs/records.md)")
    run.add_argument("--events", type=pathlib.Path, metavar="FILE.jsonl",
                     help="write one JSON line per task state change")
    run.add_argument("--journal", type=pathlib.Path, metavar="FILE",
                     help="record tasks that end DONE in FILE; a rerun with the same FILE "
                          "skips them (restored with their recorded results)")

    listing = commands.add_parser("backends", help="list installed backends and whether they can run here")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rhapsody`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    console = Console(stderr=False)
    if args.command == "backends":
        return _list_backends(console, as_json=args.json)
    # Errors go to stderr so that the summary on stdout can be piped or parsed on its own; soft
    # wrapping keeps each message on one line for grep.
    return _run(console, Console(stderr=True, soft_wrap=True), args)


def _list_backends(console: Console, *, as_json: bool) -> int:
    found = discover_backends()
    if as_json:
        print(json.dumps([
            {"name": i.name, "distribution": i.distribution, "version": i.version,
             "available": i.available, "reason": i.reason, "note": i.note,
             "engine_versions": dict(i.engine_versions)}
            for i in found.values()
        ], indent=2))
        return 0
    table = Table(title="rhapsody backends")
    # A name is what users type: it is never cut (an 80-column pipe or CI log would otherwise
    # shorten it to "probe_thirdpa…"). The other columns fold, so no reason loses its end.
    table.add_column("backend", no_wrap=True, overflow="fold")
    table.add_column("distribution", overflow="fold")
    table.add_column("can run here", overflow="fold")
    for info in found.values():
        origin = " ".join(part for part in (info.distribution, info.version) if part) or "?"
        if not info.available:
            status = Text.assemble(("no", "red"), f": {info.reason}")
        else:
            status = Text.assemble(("yes", "green"), f" ({info.note})" if info.note else "")
            engine = ", ".join(f"{k} {v}" for k, v in info.engine_versions.items())
            if engine:
                status.append(f"; engine: {engine}")
        table.add_row(Text(info.name), Text(origin), status)
    console.print(table)
    return 0


def _run(console: Console, errors: Console, args: argparse.Namespace) -> int:
    with RunStopper() as stopper:
        try:
            workload = load_workload(args.workload)
            backend = get_backend(args.backend, **dict(args.options))
            records = _records(args)
        except KeyboardInterrupt:
            errors.print("rhapsody: interrupted while loading the workload", markup=False)
            return INTERRUPTED
        except (WorkloadError, BackendUnavailableError, TypeError, ValueError) as exc:
            errors.print(f"rhapsody: {exc}", style="red", markup=False, highlight=False)
            return 2
        except Exception:
            errors.print(f"rhapsody: loading {args.workload} failed:", style="red", markup=False)
            errors.print(traceback.format_exc(), markup=False, highlight=False)
            return 2
        progress = None if args.no_progress or not console.is_terminal else make_progress(console)
        report = RunReport(progress=progress)
        register_plugin(report, name="rhapsody-cli-report")
        status = 0
        try:
            if progress is not None:
                progress.start()
            try:
                _run_loop(_drive(workload, backend, args.timeout, stopper, records, errors),
                          stopper)
            finally:
                if progress is not None:
                    progress.stop()
        except (asyncio.CancelledError, KeyboardInterrupt):
            # KeyboardInterrupt: a Ctrl-C in the moment before the run's task exists.
            if not stopper.interrupted:
                raise
            status = INTERRUPTED
        except RunTimedOut as exc:
            errors.print(f"rhapsody: {exc}", style="red", markup=False, highlight=False)
            status = 1
        except Exception:
            errors.print("rhapsody: the workload raised:", style="red", markup=False)
            errors.print(traceback.format_exc(), markup=False, highlight=False)
            status = 2
        finally:
            unregister_plugin(report)
        if stopper.interrupted:
            # Whatever the workload did with the cancellation, the user asked it to stop.
            status = INTERRUPTED
        report.render(console)
        if status == 0 and not report.ok:
            status = 1
        stopper.wait_for_threads(status)
    return status


def _run_loop(main: Coroutine[Any, Any, None], stopper: RunStopper) -> None:
    """``asyncio.run(main)``, except that closing does not wait for the default executor's threads
    (asyncio.run would, for up to 5 minutes): RunStopper.wait_for_threads bounds that wait."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        task = loop.create_task(main)
        stopper.watch(loop, task)
        loop.run_until_complete(task)
    finally:
        try:
            leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for leftover in leftovers:
                leftover.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class RunTimedOut(Exception):
    """``--timeout`` passed (not a TimeoutError the workload raised itself)."""


def _records(args: argparse.Namespace) -> list[Any]:
    from ..records import EventLog, HtmlReport, Journal

    for path in (args.journal, args.events, args.report):
        if path is not None and not path.parent.is_dir():
            raise ValueError(f"{path}: its folder {path.parent} does not exist")
    records: list[Any] = []
    if args.journal is not None:
        records.append(Journal(args.journal))
    if args.events is not None:
        records.append(EventLog(args.events))
    if args.report is not None:
        records.append(HtmlReport(args.report, title=f"rhapsody run {args.workload.name}"))
    return records


async def _drive(workload: Any, backend: Any, timeout: float | None, stopper: RunStopper,
                 records: list[Any], errors: Console) -> None:
    async with Session(backends=[backend], records=records) as session:
        for started in session.backends.values():
            link = getattr(started, "dashboard_link", None)  # e.g. Dask's, when it serves one
            if isinstance(link, str) and link:
                errors.print(f"rhapsody: {started.name} dashboard: {link}", markup=False,
                             highlight=False)
        job = asyncio.ensure_future(workload(session))
        try:
            # asyncio.wait, not wait_for: a TimeoutError the workload raises (a task's own timeout)
            # is the workload's error, not --timeout.
            await asyncio.wait({job}, timeout=timeout)
            if job.done():
                job.result()
                return
            # A Ctrl-C during the clean-up below ends the process at once.
            stopper.stopping = True
            raise RunTimedOut(
                f"the workload did not finish within {timeout:g} s; {session.in_flight} tasks were "
                "still running and have been cancelled"
            )
        finally:
            if not job.done():
                job.cancel()
                # Bounded: a workload that ignores its cancellation must not keep the session open.
                await asyncio.wait({job}, timeout=_WORKLOAD_CANCEL_GRACE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
