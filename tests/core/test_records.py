"""rhapsody.records on real sessions: timings, the event log's schema, the journal (restore,
unpicklable values, torn lines), task identity, OpenTelemetry spans, and how recorders are scoped
to their session. The HTML report is checked in a real browser in test_records_report.py; resume
after a SIGKILL of a real `rhapsody run` in test_records_resume.py."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import pickle
import threading
from typing import Any

import pluggy
import pytest

from rhapsody import AITask, ComputeTask, Session, get_backend, hookimpl
from rhapsody.records import EventLog, HtmlReport, Journal, OtelSpans
from rhapsody.records.identity import task_key

COUNTER_LOCK = threading.Lock()


def square(x: int) -> int:
    return x * x


def counted(path: str, x: int) -> int:
    # Appends one line per execution: the file counts how often each task really ran.
    with COUNTER_LOCK, open(path, "a") as stream:
        stream.write(f"{x}\n")
    return x * 10


def fails(message: str) -> None:
    raise ValueError(message)


def makes_lock() -> Any:
    return threading.Lock()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def run_tasks(tasks: list[Any], records: list[Any], **options: Any) -> list[Any]:
    async with Session(records=records, **options) as session:
        await session.submit_tasks(tasks)
        return await session.wait_tasks(tasks)


def executions(path: pathlib.Path) -> list[int]:
    return sorted(int(line) for line in path.read_text().split()) if path.exists() else []


# -- timings --------------------------------------------------------------------------------

def test_timings_are_stamped_once_per_hand_over(tmp_path: pathlib.Path) -> None:
    tasks = [ComputeTask(square, args=(i,), name=f"sq{i}") for i in range(20)]
    tasks.append(ComputeTask(executable="/bin/sh", arguments=["-c", "exit 3"]))
    run(run_tasks(tasks, [EventLog(tmp_path / "e.jsonl")]))
    submitted = {task.timings["SUBMITTED"] for task in tasks}
    # One submit_tasks call to one backend is one hand-over: one clock read for all 21 tasks.
    assert len(submitted) == 1
    # Tasks that ended in one batch (the noop backend ends a submission in one) share one
    # read-only timings mapping.
    done = [ComputeTask(square, args=(i,)) for i in range(50)]
    run(run_tasks(done, [EventLog(tmp_path / "noop.jsonl")], backends=["noop"]))
    assert len({id(task.timings) for task in done}) == 1
    with pytest.raises(TypeError, match="read-only"):
        tasks[0].timings["mine"] = 1.0
    assert dict(tasks[0].timings) == tasks[0].timings
    assert pickle.loads(pickle.dumps(tasks[0])).timings == tasks[0].timings
    for task in tasks:
        assert set(task.timings) >= {"SUBMITTED", task.state}
        assert task.timings["SUBMITTED"] <= task.timings[task.state]
    assert tasks[-1].state == "FAILED" and "FAILED" in tasks[-1].timings
    assert tasks[0].name == "sq0"


def test_no_records_no_timings() -> None:
    tasks = [ComputeTask(square, args=(2,))]
    run(run_tasks(tasks, []))
    assert tasks[0].timings is None and "timings" not in tasks[0]


def test_name_must_be_a_non_empty_string() -> None:
    with pytest.raises(TypeError, match="name must be a non-empty string"):
        ComputeTask(square, name="")
    with pytest.raises(TypeError, match="name must be a non-empty string"):
        AITask("hello", name=3)  # type: ignore[arg-type]
    assert ComputeTask(square).name is None


def test_timings_are_runtime_fields_left_out_of_to_dict(tmp_path: pathlib.Path) -> None:
    task = ComputeTask(square, args=(3,), name="three")
    run(run_tasks([task], [EventLog(tmp_path / "e.jsonl")]))
    data = task.to_dict()
    assert data["name"] == "three" and "timings" not in data
    assert "timings" in task.to_dict(include_results=True)


# -- the event log --------------------------------------------------------------------------

ALWAYS = {"v", "time", "uid", "name", "kind", "backend", "state"}
FINAL = ALWAYS | {"exit_code", "error", "retried"}


def test_event_log_schema(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "run.jsonl"
    tasks = [ComputeTask(square, args=(i,)) for i in range(5)]
    tasks.append(ComputeTask(fails, args=("bad input",), name="raiser"))
    tasks.append(ComputeTask(executable="/bin/sh", arguments=["-c", "echo disk on fire >&2; exit 7"]))
    run(run_tasks(tasks, [EventLog(path)]))
    lines = path.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    # The fast writer writes exactly what json.dumps writes for the documented object.
    assert lines == [json.dumps(event) for event in events]
    by_uid: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        assert event["v"] == 1
        # worker: only where the backend names it (concurrent does for function tasks).
        assert set(event) - {"worker"} in (ALWAYS, FINAL), set(event)
        by_uid.setdefault(event["uid"], []).append(event)
    assert set(by_uid) == {task.uid for task in tasks}
    for task in tasks:
        states = [event["state"] for event in by_uid[task.uid]]
        assert states[0] == "SUBMITTED" and states[-1] == task.state
        final = by_uid[task.uid][-1]
        assert final["time"] == task.timings[task.state]
        assert final["kind"] == task.kind and final["backend"] == "concurrent"
    raiser = by_uid[tasks[5].uid][-1]
    assert raiser["name"] == "raiser" and raiser["error"] == "ValueError: bad input"
    assert raiser["worker"].startswith("rhapsody-concurrent_")  # the thread that ran it
    shell = by_uid[tasks[6].uid][-1]
    assert shell["exit_code"] == 7 and shell["error"] == "disk on fire"
    # Greppable as documented.
    failed = [line for line in path.read_text().splitlines() if '"state": "FAILED"' in line]
    assert len(failed) == 2


def test_event_values_are_written_as_json_writes_them() -> None:
    from rhapsody.records.events import _value

    for value in (1.5, 1796310159.8538976, 1e-7, 1e300, float("nan"), float("-inf"), 0, -3,
                  10**20, True, None, "plain", 'quote " and\nnewline', "non-ascii é ✓"):
        assert _value(value) == json.dumps(value), value


def test_records_hear_only_their_own_session(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "mine.jsonl"

    async def both() -> tuple[list[Any], list[Any]]:
        mine = [ComputeTask(square, args=(i,)) for i in range(5)]
        theirs = [ComputeTask(square, args=(i,)) for i in range(5)]
        await asyncio.gather(run_tasks(mine, [EventLog(path)]), run_tasks(theirs, []))
        return mine, theirs

    mine, theirs = run(both())
    uids = {json.loads(line)["uid"] for line in path.read_text().splitlines()}
    assert uids == {task.uid for task in mine}
    assert all(task.timings is None for task in theirs)


def test_bad_recorders_are_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(TypeError, match="has no rhapsody_task_states_changed"):
        Session(records=[object()])

    class ValidatesOnly:
        @hookimpl
        def rhapsody_validate_task(self, task: Any, backend: Any) -> None:
            pass

    with pytest.raises(TypeError, match="has no rhapsody_task_states_changed"):
        Session(records=[ValidatesOnly()])

    class Misspelt:
        @hookimpl
        def rhapsody_task_states_changed(self, tasks: Any) -> None:
            pass

        @hookimpl
        def rhapsody_task_state_changed(self, tasks: Any) -> None:
            pass

    with pytest.raises(pluggy.PluginValidationError):
        Session(records=[Misspelt()])
    with pytest.raises(ValueError, match="at most one Journal"):
        Session(records=[Journal(tmp_path / "a"), Journal(tmp_path / "b")])


def test_a_recorder_that_cannot_open_fails_the_start(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with Session(records=[EventLog(tmp_path / "no" / "such" / "dir.jsonl")]):
            pass

    with pytest.raises(FileNotFoundError):
        run(main())


# -- the journal ----------------------------------------------------------------------------

def test_journal_restores_done_tasks_and_reruns_the_rest(tmp_path: pathlib.Path) -> None:
    journal, counter = tmp_path / "run.journal", tmp_path / "runs.txt"

    def make() -> list[Any]:
        tasks = [ComputeTask(counted, args=(str(counter), i)) for i in range(6)]
        tasks.append(ComputeTask(fails, args=("again",)))
        return tasks

    first = run(run_tasks(make(), [Journal(journal)]))
    assert [task.state for task in first] == ["DONE"] * 6 + ["FAILED"]
    assert executions(counter) == list(range(6))
    assert len(journal.read_text().splitlines()) == 6  # DONE tasks only

    recorder = Journal(journal)
    second = run(run_tasks(make(), [recorder, EventLog(tmp_path / "e.jsonl")]))
    assert executions(counter) == list(range(6))  # nothing ran again
    assert [task.return_value for task in second[:6]] == [i * 10 for i in range(6)]
    assert all(task.restored for task in second[:6])
    assert second[6].state == "FAILED" and not second[6].restored  # a failure runs again
    assert recorder.restored == 6 and recorder.recorded == 0
    assert len(journal.read_text().splitlines()) == 6
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    restored = [e for e in events if e.get("restored")]
    assert {e["state"] for e in restored} == {"SUBMITTED", "DONE"} and len(restored) == 12

    async def awaited() -> list[int]:
        async with Session(records=[Journal(journal)]) as session:
            tasks = make()[:3]
            futures = await session.submit_tasks(tasks)
            return [(await future).return_value for future in futures]

    assert run(awaited()) == [0, 10, 20]
    assert executions(counter) == list(range(6))


def test_journal_records_an_unpicklable_value_as_such_and_reruns_it(tmp_path: pathlib.Path) -> None:
    journal = tmp_path / "run.journal"
    run(run_tasks([ComputeTask(makes_lock, uid="lock")], [Journal(journal)]))
    record = json.loads(journal.read_text())
    assert record["uid"] == "lock" and "value" not in record
    assert "pickle" in record["unpicklable"]
    again = ComputeTask(makes_lock, uid="lock")
    run(run_tasks([again], [Journal(journal)]))
    assert again.state == "DONE" and not again.restored
    assert isinstance(again.return_value, type(threading.Lock()))


def test_journal_ignores_a_torn_last_line_and_appends_after_it(tmp_path: pathlib.Path) -> None:
    journal, counter = tmp_path / "run.journal", tmp_path / "runs.txt"
    first = [ComputeTask(counted, args=(str(counter), i)) for i in range(3)]
    run(run_tasks(first, [Journal(journal)]))
    whole = journal.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[1]
    torn = next(task.args[1] for task in first if task.uid == json.loads(last)["uid"])
    journal.write_bytes(whole[:-len(last) - 1] + last[: len(last) // 2])  # the last line torn
    recorder = Journal(journal)
    tasks = [ComputeTask(counted, args=(str(counter), i)) for i in range(4)]
    run(run_tasks(tasks, [recorder]))
    assert recorder.ignored_lines == 1 and recorder.restored == 2
    # The task whose line was torn ran again, as did the new one; the others did not.
    assert executions(counter) == sorted([0, 1, 2, torn, 3])
    lines = journal.read_bytes().split(b"\n")
    assert lines[-1] == b""
    parsed = []
    for raw in lines[:-1]:
        try:
            parsed.append(json.loads(raw))
        except ValueError:
            parsed.append(None)
    assert parsed.count(None) == 1  # the torn line stays, alone on its line
    assert len([p for p in parsed if p]) == 4


def test_journal_refuses_another_format_version(tmp_path: pathlib.Path) -> None:
    journal = tmp_path / "run.journal"
    journal.write_text(json.dumps({"v": 99, "key": "uid:x"}) + "\n")
    with pytest.raises(ValueError, match="format version 99"):
        run(run_tasks([ComputeTask(square, args=(1,))], [Journal(journal)]))


def test_restored_tasks_are_undone_with_a_refused_submission(tmp_path: pathlib.Path) -> None:
    journal = tmp_path / "run.journal"
    run(run_tasks([ComputeTask(square, args=(4,), uid="four")], [Journal(journal)]))

    async def main() -> list[Any]:
        async with Session(records=[Journal(journal)]) as session:
            tasks = [ComputeTask(square, args=(4,), uid="four"),
                     ComputeTask(square, args=(5,), backend="elsewhere")]
            with pytest.raises(ValueError, match="elsewhere"):
                await session.submit_tasks(tasks)
            assert session.in_flight == 0
            return tasks

    tasks = run(main())
    assert [task.state for task in tasks] == ["NEW", "NEW"]
    assert not tasks[0].restored and tasks[0].return_value is None


# -- identity -------------------------------------------------------------------------------

def test_identity_covers_what_the_docs_say(tmp_path: pathlib.Path) -> None:
    assert task_key(ComputeTask(square, uid="step-1")) == "uid:step-1"
    assert task_key(ComputeTask(square, args=(1,))) == task_key(ComputeTask(square, args=(1,)))
    assert task_key(ComputeTask(square, args=(1,))) != task_key(ComputeTask(square, args=(2,)))
    assert task_key(ComputeTask(square, args=(1,))) != task_key(ComputeTask(counted, args=(1,)))
    assert task_key(ComputeTask(square, kwargs={"a": 1, "b": 2})) == \
        task_key(ComputeTask(square, kwargs={"b": 2, "a": 1}))
    # Not covered: timeout, retries, name.
    assert task_key(ComputeTask(square, args=(1,), timeout=5, name="x")) == \
        task_key(ComputeTask(square, args=(1,)))

    def exe(**options: Any) -> str | None:
        return task_key(ComputeTask(executable="echo", arguments=["a"],
                                    task_backend_specific_kwargs=options or None))

    assert exe() == exe()
    assert len({exe(), exe(cwd="/tmp"), exe(env={"A": "1"}), exe(shell=True)}) == 4
    assert exe() != task_key(ComputeTask(executable="echo", arguments=["b"]))
    assert task_key(ComputeTask(square, args=(threading.Lock(),))) is None
    assert task_key(AITask("hi", model="m")) != task_key(AITask("hi", model="n"))


# -- OpenTelemetry --------------------------------------------------------------------------

def test_otel_spans_per_task_under_the_session_span(tmp_path: pathlib.Path) -> None:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="needs rhapsody-core[otel]")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tasks = [ComputeTask(square, args=(i,), name=f"sq{i}") for i in range(3)]
    tasks.append(ComputeTask(executable="/bin/sh", arguments=["-c", "echo broken >&2; exit 5"]))
    run(run_tasks(tasks, [OtelSpans(tracer_provider=provider)]))
    spans = exporter.get_finished_spans()
    sessions = [span for span in spans if span.name == "rhapsody.session"]
    task_spans = [span for span in spans if span.name == "rhapsody.task"]
    assert len(sessions) == 1 and len(task_spans) == 4
    session = sessions[0]
    by_uid = {span.attributes["rhapsody.task.uid"]: span for span in task_spans}
    for task in tasks:
        span = by_uid[task.uid]
        assert span.parent is not None and span.parent.span_id == session.context.span_id
        assert span.context.trace_id == session.context.trace_id
        assert span.attributes["rhapsody.backend"] == "concurrent"
        assert span.attributes["rhapsody.task.state"] == task.state
        assert span.start_time == int(task.timings["SUBMITTED"] * 1e9)
        assert span.end_time == int(task.timings[task.state] * 1e9)
    assert by_uid[tasks[0].uid].attributes["rhapsody.task.name"] == "sq0"
    failed = by_uid[tasks[3].uid]
    assert failed.attributes["rhapsody.task.exit_code"] == 5
    assert failed.status.status_code == StatusCode.ERROR and "broken" in failed.status.description
    assert session.end_time >= max(span.end_time for span in task_spans)


# -- the HTML report's content (the browser test is in test_records_report.py) --------------

def test_report_counts_slowest_and_every_failure(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "run.html"
    tasks = [ComputeTask(square, args=(i,)) for i in range(10)]
    tasks += [ComputeTask(fails, args=(f"failure number {i}",)) for i in range(12)]
    run(run_tasks(tasks, [HtmlReport(path)]))
    page = path.read_text()
    assert '<td class=count id=count-DONE>10</td>' in page
    assert '<td class=count id=count-FAILED>12</td>' in page
    assert all(f"failure number {i}</pre>" in page for i in range(12))
    assert page.count('<rect class="task ') == 22
    assert "http://" not in page and "https://" not in page and "<script" not in page


# -- live progress --------------------------------------------------------------------------

def test_live_progress_draws_the_bar_on_its_console() -> None:
    import io

    from rich.console import Console

    from rhapsody.records import LiveProgress

    screen = io.StringIO()
    progress = LiveProgress(console=Console(file=screen, force_terminal=True, width=100))
    tasks = [ComputeTask(square, args=(i,)) for i in range(7)]
    tasks.append(ComputeTask(fails, args=("x",)))
    run(run_tasks(tasks, [progress]))
    assert (progress.submitted, progress.ended) == (8, 8)
    assert "8/8" in screen.getvalue() and "tasks" in screen.getvalue()


async def test_concurrent_names_the_worker_that_ran_each_function_task() -> None:
    for options, prefix in (({}, "rhapsody-concurrent_"), ({"processes": 2}, "process ")):
        async with Session(backends=[get_backend("concurrent", **options)]) as session:
            tasks = [ComputeTask(function=pow, args=(2, n)) for n in range(20)]
            await session.submit_tasks(tasks)
            await session.wait_tasks(tasks)
            assert all(task.worker.startswith(prefix) for task in tasks), [t.worker for t in tasks]
            if prefix == "process ":
                pids = {int(task.worker.split()[1]) for task in tasks}
                assert os.getpid() not in pids  # the pool's processes, not this one
