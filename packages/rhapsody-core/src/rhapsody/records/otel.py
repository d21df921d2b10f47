"""OpenTelemetry: one span per task, children of one span for the session.

Needs the ``otel`` extra (``pip install "rhapsody-core[otel]"``: ``opentelemetry-api`` and
``opentelemetry-sdk``). Spans go to the tracer provider given, else to the global one, so any
exporter the program configures (OTLP, console, Jaeger, an in-memory one in tests) receives
them::

    Session(records=[OtelSpans(tracer_provider=provider)])

The session span, ``rhapsody.session``, begins when the session starts and ends when it closes.
Each task's span, ``rhapsody.task``, is made when the task ends, with the task's own times: it
begins at its submission and ends at its final state, with an event ``RUNNING`` where the
backend reported one. Its attributes: ``rhapsody.task.uid``, ``rhapsody.task.name`` (where
given), ``rhapsody.task.kind``, ``rhapsody.backend``, ``rhapsody.task.state``,
``rhapsody.task.exit_code`` (executables), ``rhapsody.task.retried``,
``rhapsody.task.restored`` (where a journal gave the results back) and ``rhapsody.worker``
(where the backend names it). A FAILED task's span has status ERROR, with its error as the
description.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..hookspecs import hookimpl
from ..states import TERMINAL_STATES, TaskState
from ..task import Task
from .timeline import failure_text


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1e9)


class OtelSpans:
    """Emits a span per task under a session span (see the module docstring).

    Args:
        tracer_provider: where the spans go; the global provider when omitted.
        session_name: the session span's name.

    Raises:
        ImportError: OpenTelemetry is not installed (the message says which extra to install).
    """

    def __init__(self, *, tracer_provider: Any = None, session_name: str = "rhapsody.session") -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise ImportError(
                "OtelSpans needs OpenTelemetry: pip install \"rhapsody-core[otel]\" "
                f"(opentelemetry-api and opentelemetry-sdk); importing it failed: {exc}") from exc
        self._trace = trace
        self._tracer = trace.get_tracer("rhapsody", tracer_provider=tracer_provider)
        self._session_name = session_name
        self._session: Any = None
        self._context: Any = None
        self.spans = 0

    def open(self) -> None:
        """Begin the session span."""
        if self._session is None:
            self._session = self._tracer.start_span(self._session_name)
            self._context = self._trace.set_span_in_context(self._session)

    def close(self) -> None:
        """End the session span. Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            session.end()

    @hookimpl
    def rhapsody_task_states_changed(self, tasks: Sequence[Task]) -> None:
        if self._session is None:
            return
        for task in tasks:
            state = task["state"]
            if state in TERMINAL_STATES:
                self._span(task, state)

    def _span(self, task: Task, state: str) -> None:
        stamps = task.get("timings") or {}
        attributes: dict[str, Any] = {
            "rhapsody.task.uid": task["uid"], "rhapsody.task.kind": task.kind,
            "rhapsody.backend": str(task["backend"]), "rhapsody.task.state": state,
            "rhapsody.task.retried": int(task.get("retried", 0)),
        }
        for key, value in (("rhapsody.task.name", task.get("name")),
                           ("rhapsody.task.exit_code", task.get("exit_code")),
                           ("rhapsody.worker", task.get("worker"))):
            if value is not None:
                attributes[key] = value if isinstance(value, (int, str)) else str(value)
        if task.get("restored"):
            attributes["rhapsody.task.restored"] = True
        span = self._tracer.start_span("rhapsody.task", context=self._context,
                                       start_time=_ns(stamps.get(TaskState.SUBMITTED)),
                                       attributes=attributes)
        running = stamps.get(TaskState.RUNNING)
        if running is not None:
            span.add_event("RUNNING", timestamp=_ns(running))
        if state == TaskState.FAILED:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, failure_text(task, 500)))
        span.end(end_time=_ns(stamps.get(state)))
        self.spans += 1
