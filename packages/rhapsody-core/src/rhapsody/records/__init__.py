"""Run records, all built on the ``rhapsody_task_states_changed`` hook.

- :class:`Timeline`: ``task.timings``, the time each task entered each state;
- :class:`EventLog`: a JSON Lines file, one line per state change;
- :class:`HtmlReport`: one self-contained HTML page (counts, throughput, task stream, failures);
- :class:`OtelSpans`: OpenTelemetry spans (the ``otel`` extra);
- :class:`Journal`: DONE tasks with their results, so that a rerun skips them;
- :class:`LiveProgress`: a live progress bar, in a terminal or a Jupyter notebook.

Give them to a session, ``Session(records=[HtmlReport("run.html"), Journal("run.journal")])``:
they then hear only that session's tasks, with timings stamped, and are opened and closed with
it. Each is an ordinary plugin, so a program may also register one for every session with
:func:`rhapsody.register_plugin` (add a :class:`Timeline` for timings, and call ``open()`` and
``close()`` itself). See docs/records.md.
"""

from .events import EventLog
from .journal import Journal
from .otel import OtelSpans
from .progress import LiveProgress
from .report import HtmlReport
from .timeline import Timeline

__all__ = ["EventLog", "HtmlReport", "Journal", "LiveProgress", "OtelSpans", "Timeline"]
