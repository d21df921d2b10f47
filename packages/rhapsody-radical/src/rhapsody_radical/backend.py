"""``RadicalBackend``: rhapsody tasks as RADICAL-Pilot tasks inside one pilot.

The hot path, top to bottom: :meth:`RadicalBackend.submit_tasks` turns each task into an
``rp.TaskDescription`` (checked against RP's schema), hands them to RP's TaskManager in one call,
and RP's state subscriber thread then calls :meth:`_on_task_state` for every state change of every
task in a state message, followed by :meth:`_on_state_message` once per message: that is where the
batch collected from the message is handed to the session in one ``report`` call.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
import os
import shlex
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rhapsody import BaseBackend, TaskExecutionError, TaskState, WorkerLostError
from rhapsody.backend import is_async_callable
from rhapsody.task import Task

from . import functions
from ._compat import task_description_fields
from .pilot import (
    PilotSize,
    ensure_rp_environment,
    failure_reason,
    local_path,
    pilot_description,
    remove_tree,
    task_files,
    verified,
    wait_for_session_processes,
)
from .resources import check_function_request, description_fields

log = logging.getLogger("rhapsody_radical")

_RUNNING, _DONE, _FAILED, _CANCELED = (TaskState.RUNNING, TaskState.DONE, TaskState.FAILED,
                                       TaskState.CANCELED)

# task_backend_specific_kwargs keys the backend fills itself from the task's own fields.
_OWNED_KEYS = {
    "uid": "the backend names RP tasks itself (rhapsody's uid is kept as the RP task's name)",
    "name": "the backend sets it to the rhapsody task uid",
    "mode": "the task kind decides it (executable, or function through Raptor)",
    "executable": "use ComputeTask(executable=...)",
    "arguments": "use ComputeTask(arguments=[...])",
    "function": "use ComputeTask(function=...)",
    "args": "use ComputeTask(args=(...))",
    "kwargs": "use ComputeTask(kwargs={...})",
    "code": "use ComputeTask(function=...)",
    "command": 'use ComputeTask(executable="a shell line", task_backend_specific_kwargs={"shell": True})',
    "timeout": "use ComputeTask(timeout=...)",
    "raptor_id": "the backend routes function tasks to its own Raptor master",
}
# rhapsody's portable spellings, and what they become in RP.
_ALIASES = {"cwd": "sandbox", "env": "environment"}
# A function runs inside a Raptor worker process: only these RP fields mean anything there.
_FUNCTION_KEYS = frozenset({"env", "environment", "priority", "metadata", "tags"})
# How long shutdown lets RP report the cancellation of tasks still running.
_CANCEL_GRACE = 15.0
# Raptor is started this many times at most when it does not answer its probe call.
_RAPTOR_ATTEMPTS = 2


class RadicalBackend(BaseBackend):
    """Runs executables (any ``rp.TaskDescription``) and Python functions (via Raptor) in a pilot.

    By default the backend creates an RP session and one pilot on ``resource`` and closes both
    on shutdown. Pass ``session=`` to create the pilot in your session instead, or ``pilot=`` to
    run in your (active or starting) pilot; the backend then closes only what it created (its
    TaskManager, and its pilot in the ``session=`` case).

    Args:
        resource: RP resource label of the pilot (``local.localhost`` runs on this machine).
        cores, gpus, nodes: pilot size (``cores`` defaults to this machine's CPU count when
            neither is given).
        runtime: pilot wall time in minutes.
        queue, project, access_schema: batch queue, allocation and access schema of the pilot.
        pilot_description: any other ``rp.PilotDescription`` fields (``sandbox``,
            ``prepare_env``, ...).
        session: an existing ``rp.Session`` (the backend never closes it).
        pilot: an existing ``rp.Pilot`` (the backend never cancels it).
        raptor_workers: Raptor workers started for function tasks (0: no Raptor; function
            tasks are then refused at submit).
        raptor_cores_per_worker: cores of each Raptor worker.
        raptor_startup_timeout: seconds initialisation waits for Raptor to run a first (probe)
            call. A Raptor that has not answered by then is cancelled and started once more.
        startup_timeout: seconds initialisation waits for the pilot to become active
            (``None``: no limit, for pilots that wait in a batch queue).
        session_dir: where RP writes the client-side session directory (default: the current
            directory); only when the backend creates the session.
        cleanup: on shutdown, delete what this backend's RP session or pilot wrote: the local
            session or pilot sandbox and the client session directory.
        activate_venv: set ``VIRTUAL_ENV`` and ``PATH`` for this venv when they do not point to
            it (RP needs an activated venv to start its helpers and the pilot agent).
        name: this instance's name in a session (default ``"radical"``).

    Raises:
        ValueError: ``session`` and ``pilot`` together, pilot options together with ``pilot``,
            or a negative worker count.
        TypeError: ``session``/``pilot`` are not RP objects (checked at initialisation).
    """

    name = "radical"
    task_kinds = frozenset({"function", "executable"})

    def __init__(
        self,
        *,
        resource: str | None = None,
        cores: int | None = None,
        gpus: int | None = None,
        nodes: int | None = None,
        runtime: int | None = None,
        queue: str | None = None,
        project: str | None = None,
        access_schema: str | None = None,
        pilot_description: Mapping[str, Any] | None = None,
        session: Any = None,
        pilot: Any = None,
        raptor_workers: int = 1,
        raptor_cores_per_worker: int = 1,
        raptor_startup_timeout: float = 120.0,
        startup_timeout: float | None = 300.0,
        session_dir: str | None = None,
        cleanup: bool = False,
        activate_venv: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        pilot_options: dict[str, Any] = {"resource": resource, "cores": cores, "gpus": gpus, "nodes": nodes,
                         "runtime": runtime, "queue": queue, "project": project,
                         "access_schema": access_schema}
        if pilot is not None:
            given = [k for k, v in pilot_options.items() if v is not None]
            if pilot_description:
                given.append("pilot_description")
            if session is not None:
                given.append("session")
            if given:
                raise ValueError(
                    f"radical backend: pilot= runs in an existing pilot; {', '.join(given)} "
                    "cannot be applied to it"
                )
        if session is not None and session_dir is not None:
            raise ValueError("radical backend: session_dir= only applies to a session the backend creates")
        for label, count in (("raptor_workers", raptor_workers),
                             ("raptor_cores_per_worker", raptor_cores_per_worker)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"radical backend: {label} must be an integer >= 0, got {count!r}")
        if isinstance(raptor_startup_timeout, bool) or not isinstance(
                raptor_startup_timeout, (int, float)) or not raptor_startup_timeout > 0:
            raise ValueError(
                f"radical backend: raptor_startup_timeout must be > 0, got {raptor_startup_timeout!r}")
        if startup_timeout is not None and not startup_timeout > 0:
            raise ValueError(f"radical backend: startup_timeout must be > 0 or None, got {startup_timeout!r}")
        self._pilot_options = pilot_options
        self._pilot_extra = dict(pilot_description or {})
        self._given_session = session
        self._given_pilot = pilot
        self._raptor_workers = raptor_workers
        self._raptor_cores = max(1, raptor_cores_per_worker)
        self._raptor_startup_timeout = float(raptor_startup_timeout)
        self._startup_timeout = startup_timeout
        self._session_dir = session_dir
        self._cleanup = cleanup
        self._activate_venv = activate_venv

        self._rp: Any = None
        self._session: Any = None
        self._pmgr: Any = None
        self._pilot: Any = None
        self._tmgr: Any = None
        self._owns_session = False
        self._owns_pilot = False
        self._raptor_parts: list[Any] = []  # the Raptor master's rp.Task, then its workers'
        self._raptor_failure: str | None = None
        self._pilot_failure: str | None = None
        self._td_schema: frozenset[str] = frozenset()
        self._size: PilotSize | None = None
        self._pilot_callback: Any = None
        self._uid_counter = itertools.count()
        self._uid_prefix = ""

        # Tasks handed to RP live in self.in_flight under their RP uid; updates gathered on RP's
        # subscriber thread wait in _batch until RP's state message ends the sweep.
        self._lock = threading.Lock()
        self._batch: list[tuple[Task, str]] = []
        self._closing = False

    @classmethod
    def check_available(cls) -> None:
        """Raise ``radical.pilot``'s own ``ImportError`` when it is not installed."""
        importlib.import_module("radical.pilot")

    @property
    def _raptor(self) -> Any:
        return self._raptor_parts[0] if self._raptor_parts else None

    @property
    def _raptor_uids(self) -> list[str]:
        return [part.uid for part in self._raptor_parts]

    @property
    def pilot(self) -> Any:
        """The ``rp.Pilot`` the backend runs in (``None`` before initialisation)."""
        return self._pilot

    @property
    def session(self) -> Any:
        """The ``rp.Session`` the backend uses (``None`` before initialisation)."""
        return self._session

    # -- start-up ----------------------------------------------------------------------------

    async def _initialize(self) -> None:
        """Create (or attach to) the session and pilot, wait until the pilot is active.

        Raises:
            ImportError: radical.pilot is not installed.
            RuntimeError: RP's helper programs cannot be found, the pilot ended during start-up
                (the message carries RP's reason: pilot log and sandbox error files), or Raptor
                could not run its probe call (it failed, ended, or stayed silent twice).
            TimeoutError: the pilot was not active within ``startup_timeout`` seconds.
            ValueError, TypeError: a bad pilot description.
        """
        rp = importlib.import_module("radical.pilot")
        self._rp = rp
        self._td_schema = task_description_fields(rp)
        if self._given_pilot is not None and not isinstance(self._given_pilot, rp.Pilot):
            raise TypeError(f"radical backend: pilot= must be an rp.Pilot, got {self._given_pilot!r}")
        if self._given_session is not None and not isinstance(self._given_session, rp.Session):
            raise TypeError(f"radical backend: session= must be an rp.Session, got {self._given_session!r}")
        try:
            await asyncio.to_thread(self._create)
            await self._wait_active()
            reserved = 1 + self._raptor_workers * self._raptor_cores if self._raptor_workers else 0
            self._size = PilotSize(self._pilot.resource_details or {}, reserved)
            if self._raptor_workers:
                await self._start_answering_raptor()
        except BaseException:
            if self._raptor_parts:
                # A given pilot outlives this backend: its Raptor must not.
                await asyncio.to_thread(self._stop_raptor)
            await asyncio.to_thread(self._teardown)
            raise

    def _create(self) -> None:
        rp = self._rp
        if self._given_pilot is None:
            options = self._pilot_options
            description = pilot_description(
                resource=options["resource"] or "local.localhost",
                cores=options["cores"], gpus=options["gpus"], nodes=options["nodes"],
                runtime=options["runtime"] if options["runtime"] is not None else 60,
                queue=options["queue"], project=options["project"],
                access_schema=options["access_schema"], extra=self._pilot_extra, rp=rp,
            )
        if self._given_session is None and self._given_pilot is None:
            ensure_rp_environment(activate_venv=self._activate_venv)
            cfg = {"base": str(Path(self._session_dir).resolve())} if self._session_dir else None
            self._session = rp.Session(cfg=cfg) if cfg else rp.Session()
            self._owns_session = True
        elif self._given_pilot is not None:
            self._session = self._given_pilot.session
        else:
            self._session = self._given_session
        if self._given_pilot is None:
            self._pmgr = rp.PilotManager(session=self._session)
            self._pilot = self._pmgr.submit_pilots(description)
            self._owns_pilot = True
        else:
            self._pilot = self._given_pilot
        # One bound-method object: RP keys callbacks by id(), unregistering needs the same one.
        self._pilot_callback = self._on_pilot_state
        self._pilot.register_callback(self._pilot_callback)
        self._tmgr = rp.TaskManager(session=self._session)
        self._uid_prefix = f"{self._tmgr.uid}.task."
        if self._owns_pilot:
            self._tmgr.add_pilots(self._pilot)
        else:
            # Added by description: RP lets one Pilot object belong to one TaskManager only, and
            # the given pilot stays free for the user's own TaskManager (and other backends).
            self._tmgr.add_pilots(self._pilot.as_dict())
        self._tmgr.register_callback(self._on_task_state)
        # Subscribed after the TaskManager's own subscriber on the same channel: RP calls the
        # two in this order for every state message, so this one sees the end of each sweep.
        self._tmgr.register_subscriber(rp.constants.STATE_PUBSUB, self._on_state_message)

    async def _wait_active(self) -> None:
        rp = self._rp
        pilot = self._pilot
        wanted = {rp.PMGR_ACTIVE, *rp.FINAL}
        started = time.monotonic()
        while pilot.state not in wanted:
            if self._startup_timeout is not None and time.monotonic() - started > self._startup_timeout:
                reason = failure_reason(pilot)
                raise TimeoutError(
                    f"radical backend: pilot {pilot.uid} was not active after "
                    f"{self._startup_timeout} s (state {pilot.state}).\n{reason}"
                )
            await asyncio.sleep(0.1)
        if pilot.state != rp.PMGR_ACTIVE:
            raise RuntimeError(f"radical backend: the pilot failed to start.\n{await self._settled_reason()}")
        # The pilot's size comes with (or just after) the state update that made it active.
        settle = time.monotonic() + 5.0
        while not pilot.resource_details and time.monotonic() < settle:
            await asyncio.sleep(0.05)
        log.info("pilot %s active after %.1f s", pilot.uid, time.monotonic() - started)

    async def _start_answering_raptor(self) -> None:
        # Function tasks go to the Raptor master through a queue the master announces once;
        # RP reports no error when that announcement, or the worker's first call, goes astray:
        # the calls would wait forever. A probe call proves the whole path before any user task
        # relies on it, and a silent Raptor is replaced instead of trusted.
        silent: list[str] = []
        files = ""
        for attempt in range(_RAPTOR_ATTEMPTS):
            started = time.monotonic()
            await asyncio.to_thread(self._start_raptor)
            probe = await asyncio.to_thread(self._submit_probe)
            bound = self._raptor_probe_timeout(attempt)
            deadline = started + bound
            while (probe.state not in self._rp.FINAL and self._raptor_failure is None
                   and self._pilot_failure is None and time.monotonic() < deadline):
                await asyncio.sleep(0.05)
            if self._pilot_failure is not None:
                raise RuntimeError(f"radical backend: the pilot ended while Raptor started.\n{self._pilot_failure}")
            if self._raptor_failure is not None:
                raise RuntimeError(f"radical backend: {self._raptor_failure}")
            if probe.state in self._rp.FINAL:
                self._check_probe(probe)
                log.info("Raptor %s answered after %.1f s", self._raptor.uid, time.monotonic() - started)
                return
            silent.append(f"attempt {attempt + 1}: {self._raptor_states()} after {bound} s")
            files = "\n".join(task_files(part) for part in self._raptor_parts)
            log.warning("radical backend: Raptor did not answer its probe call (%s); "
                        "cancelling it", silent[-1])
            await asyncio.to_thread(self._stop_raptor, probe.uid)
        raise RuntimeError(
            "radical backend: Raptor did not run its probe call in any of "
            f"{_RAPTOR_ATTEMPTS} attempts ({'; '.join(silent)}). Raise raptor_startup_timeout "
            "when Raptor needs longer to start here, or pass raptor_workers=0 to run "
            f"executables only. The last attempt's master and workers:\n{files}")

    def _raptor_probe_timeout(self, attempt: int) -> float:
        # One bound for every attempt; a test subclass shortens the first to stand for a lost one.
        return self._raptor_startup_timeout

    def _submit_probe(self) -> Any:
        rp = self._rp
        packed = functions.pack_call(divmod, (47, 5), {})
        return self._tmgr.submit_tasks(rp.TaskDescription({
            "mode": rp.TASK_FUNCTION, "name": "rhapsody-raptor-probe",
            "function": rp.PythonTask(functions.run_packed, (packed,), {}),
            "raptor_id": self._raptor.uid,
        }))

    def _check_probe(self, probe: Any) -> None:
        if probe.state == "DONE":
            try:
                ok, value = functions.unpack_outcome(probe.return_value)
            except Exception as exc:  # noqa: BLE001 - reported below with what came back
                ok, value = False, exc
            if ok and value == (9, 2):
                return
            reason = f"it returned {value!r} instead of (9, 2)"
        else:
            reason = f"it ended {probe.state}: {_rp_reason(probe)}{_stderr_tail(probe)}"
        raise RuntimeError(f"radical backend: Raptor could not run its probe call: {reason}")

    def _raptor_states(self) -> str:
        return ", ".join(f"{part.uid} {part.state}" for part in self._raptor_parts)

    def _stop_raptor(self, *also: str) -> None:
        # Forgotten first: their cancellation is no Raptor failure.
        uids = [*also, *self._raptor_uids]
        self._raptor_parts = []
        self._tmgr.cancel_tasks(uids)
        self._tmgr.wait_tasks(uids=uids, timeout=_CANCEL_GRACE)

    async def _settled_reason(self) -> str:
        # RP writes its account (the launcher's log, the sandbox's error files) a moment after it
        # publishes the final state, later still on a loaded machine: read it again until the
        # launcher's error is there or nothing has changed for a second (5 s at most).
        reason = failure_reason(self._pilot)
        changed = time.monotonic()
        give_up = changed + 5.0
        while "pilot launcher:" not in reason and time.monotonic() < give_up:
            await asyncio.sleep(0.25)
            again = failure_reason(self._pilot)
            if again != reason:
                reason, changed = again, time.monotonic()
            elif time.monotonic() - changed >= 1.0:
                break
        return reason

    def _start_raptor(self) -> None:
        rp = self._rp
        master = self._tmgr.submit_raptors(
            [rp.TaskDescription({"mode": rp.RAPTOR_MASTER, "name": "rhapsody-raptor-master"})],
            pilot_id=self._pilot.uid,
        )[0]
        worker: dict[str, Any] = {
            "mode": rp.RAPTOR_WORKER, "ranks": 1, "cores_per_rank": self._raptor_cores,
            "raptor_file": str(Path(__file__).with_name("raptor_worker.py")),
            "raptor_class": "RhapsodyWorker",
        }
        if local_path(self._pilot.pilot_sandbox) is not None:
            # On this host, workers can import what the client imports (functions defined in
            # the user's own modules are pickled by reference).
            paths = [p for p in sys.path if p and Path(p).exists()]
            worker["environment"] = {"PYTHONPATH": _export_value(os.pathsep.join(paths))}
        workers = master.submit_workers([
            rp.TaskDescription(dict(worker)) for _ in range(self._raptor_workers)
        ])
        self._raptor_parts = [master, *workers]
        # A master or worker that ended before the uids were known is caught here.
        for item in (master, *workers):
            if item.state in rp.FINAL:
                self._raptor_ended(item)

    # -- submit (hot path) -------------------------------------------------------------------

    async def check_tasks(self, tasks: Sequence[Task]) -> None:
        """Describe every task to RP's TaskDescription without handing it over.

        Raises:
            ValueError, TypeError: as :meth:`submit_tasks`; the session then submits nothing of
                the call.
        """
        rp = self._rp
        for task in tasks:
            if task.kind == "executable":
                self._describe_executable(task, rp)
            else:
                self._describe_function(task, rp)

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        """Describe every task to RP, then hand them all over in one call.

        Raises:
            ValueError: a ``task_backend_specific_kwargs`` key RP's TaskDescription does not have
                (or one the backend sets itself, or one meaningless for a function task); a
                function task when Raptor is off.
            TypeError: a value RP's TaskDescription cannot take (e.g. ``ranks="x"``).
            RuntimeError: the pilot (or, for function tasks, Raptor) has ended; its reason is
                in the message.
        Nothing is submitted when any of these is raised.
        """
        if self._pilot_failure is not None:
            raise RuntimeError(f"radical backend: the pilot has ended, no task can run.\n{self._pilot_failure}")
        rp = self._rp
        descriptions = []
        for task in tasks:
            if task.kind == "executable":
                descriptions.append(self._describe_executable(task, rp))
            else:
                descriptions.append(self._describe_function(task, rp))
        counter, prefix = self._uid_counter, self._uid_prefix
        # Registered before RP sees the tasks: their first state updates can arrive at once.
        entries = []
        for task, description in zip(tasks, descriptions):
            uid = description["uid"] = f"{prefix}{next(counter):06d}"
            entries.append(self.in_flight.add(task, key=uid))
        try:
            self._tmgr.submit_tasks(descriptions)
        except BaseException:
            for entry in entries:
                self.in_flight.pop(entry.key)
            raise
        loop = asyncio.get_running_loop()
        for entry in entries:
            task = entry.task
            if task["function"] is not None and task["timeout"] is not None:
                # Raptor has no timeout of its own: the client stops waiting and cancels.
                entry.timer = loop.call_later(task["timeout"], self._expire, entry.key)

    def _options(self, task: Task, allowed: frozenset[str] | None) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for key, value in task["task_backend_specific_kwargs"].items():
            target = _ALIASES.get(key, key)
            why = _OWNED_KEYS.get(key)
            if why is not None:
                raise ValueError(
                    f"task {task['uid']}: task_backend_specific_kwargs[{key!r}] is set by the "
                    f"radical backend: {why}"
                )
            if target not in self._td_schema and key != "shell":
                raise ValueError(
                    f"task {task['uid']}: unknown task_backend_specific_kwargs key {key!r} for the "
                    "radical backend (it takes cwd, env, shell and the fields of RADICAL-Pilot's "
                    f"TaskDescription: {', '.join(sorted(self._td_schema - _OWNED_KEYS.keys()))})"
                )
            if allowed is not None and key not in allowed:
                raise ValueError(
                    f"task {task['uid']}: task_backend_specific_kwargs[{key!r}] does not apply to "
                    "function tasks, which run inside a Raptor worker (they take: "
                    f"{', '.join(sorted(allowed))})"
                )
            if target in options:
                raise ValueError(
                    f"task {task['uid']}: task_backend_specific_kwargs sets {target!r} twice "
                    f"(as {key!r} and as {target!r})"
                )
            options[target] = value
        return options

    def _verified(self, task: Task, described: dict[str, Any], rp: Any) -> Any:
        return verified(rp.TaskDescription, described, f"task {task['uid']}: RADICAL-Pilot rejects the task")

    def _describe_executable(self, task: Task, rp: Any) -> Any:
        if not task["capture_stdio"]:
            raise ValueError(
                f"task {task['uid']}: capture_stdio=False is not supported on RADICAL-Pilot: the "
                "agent writes a task's output to files in its sandbox, read back into task.stdout "
                "and task.stderr; drop capture_stdio=False")
        options = self._options(task, None)
        # ComputeTask(resources=...) as RP fields; a field task_backend_specific_kwargs sets wins.
        options.update(description_fields(task, options))
        shell = options.pop("shell", False)
        if not isinstance(shell, bool):
            raise TypeError(f"task {task['uid']}: task_backend_specific_kwargs['shell'] must be a bool, got {shell!r}")
        environment = options.get("environment")
        if environment is not None and (
            not isinstance(environment, Mapping)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in environment.items())
        ):
            raise TypeError(f"task {task['uid']}: env must map strings to strings, got {environment!r}")
        if shell:
            line = " ".join([task["executable"], *map(shlex.quote, task["arguments"])])
            executable, arguments = "/bin/sh", ["-c", line]
        else:
            executable, arguments = task["executable"], list(task["arguments"])
        # RP writes arguments into a shell script inside double quotes and environment values
        # unquoted into `export K="v"`: both would be expanded once more. rhapsody's arguments
        # and env are literal, so `$` and backquotes are neutralised here.
        if any("$" in a or "`" in a for a in (executable, *arguments)):
            executable, arguments = _literal(executable), [_literal(a) for a in arguments]
            environment = {**(environment or {}), **_LITERAL_VARS}
        if environment:
            options["environment"] = {k: _export_value(v) for k, v in environment.items()}
        options["executable"], options["arguments"] = executable, arguments
        options["name"] = task["uid"]
        if task["timeout"] is not None:
            options["timeout"] = float(task["timeout"])
        description = self._verified(task, options, rp)
        refusal = self._size.refuse(description) if self._size is not None else None
        if refusal is not None:
            raise ValueError(
                f"task {task['uid']} can never run in pilot {self._pilot.uid}: {refusal} "
                f"(the pilot: {self._size})"
            )
        return description

    def _describe_function(self, task: Task, rp: Any) -> Any:
        if self._raptor is None:
            raise ValueError(
                f"task {task['uid']}: this radical backend runs no Raptor workers "
                "(raptor_workers=0), so it cannot run function tasks"
            )
        if self._raptor_failure is not None:
            raise RuntimeError(f"radical backend: Raptor has ended, function tasks cannot run.\n{self._raptor_failure}")
        options = self._options(task, _FUNCTION_KEYS)
        check_function_request(task, self._raptor_cores)
        try:
            packed = functions.pack_call(task["function"], task["args"], task["kwargs"])
        except Exception as exc:
            raise TypeError(f"task {task['uid']}: the function or its arguments cannot be pickled: {exc}") from exc
        runner = (functions.run_packed_async if is_async_callable(task["function"])
                  else functions.run_packed)
        options["mode"] = rp.TASK_FUNCTION
        options["function"] = rp.PythonTask(runner, (packed,), {})
        options["raptor_id"] = self._raptor.uid
        options["name"] = task["uid"]
        return self._verified(task, options, rp)

    # -- completions: RP's state subscriber thread -------------------------------------------

    def _on_task_state(self, rp_task: Any, state: str) -> None:
        uid = rp_task.uid
        entry = self.in_flight.get(uid)
        if entry is None:
            if state in self._rp.FINAL and uid in self._raptor_uids:
                self._raptor_ended(rp_task)
            return
        if state == "AGENT_EXECUTING":
            self._batch.append((entry.task, _RUNNING))
            return
        if state not in ("DONE", "FAILED", "CANCELED"):
            return
        if self.in_flight.pop(uid) is None:
            return  # already ended (cancelled on close, timed out, pilot gone)
        self._batch.append((entry.task, self._outcome(entry.task, rp_task, state, entry.cancelling)))

    def _on_state_message(self, topic: str, msg: Any) -> None:
        if self._batch:
            with self._lock:
                batch, self._batch = self._batch, []
            if batch:
                self.report(batch)

    def _outcome(self, task: Task, rp_task: Any, state: str, cancelled: bool) -> str:
        is_function = task["function"] is not None
        task["stdout"] = rp_task.stdout or ""
        task["stderr"] = rp_task.stderr or ""
        if not is_function:
            task["exit_code"] = rp_task.exit_code
        if state == "CANCELED":
            if not cancelled and task["timeout"] is not None:
                task["exception"] = TimeoutError(
                    f"task {task['uid']} ran longer than its timeout of {task['timeout']} s")
                return _FAILED
            return _CANCELED
        if state == "DONE":
            if not is_function:
                return _DONE
            try:
                ok, value = functions.unpack_outcome(rp_task.return_value)
            except Exception as exc:  # noqa: BLE001 - a result we cannot read fails the task
                task["exception"] = RuntimeError(
                    f"task {task['uid']}: cannot read the Raptor worker's result: {exc}")
                return _FAILED
            if ok:
                task["return_value"] = value
                return _DONE
            task["exception"] = value
            return _FAILED
        # FAILED in RP: a non-zero exit keeps the process's own stderr; anything else (never
        # scheduled, pilot gone, Raptor error) carries RP's reason.
        reason = _rp_reason(rp_task)
        lost = functions.lost_call_exit_code(reason) if is_function else None
        if lost is not None:
            # The call's process died (our Raptor worker says how): the task's worker was lost.
            task["exception"] = WorkerLostError(task["uid"], "Raptor call process", lost)
        elif is_function:
            task["exception"] = RuntimeError(
                f"RADICAL-Pilot could not run function task {task['uid']}: {reason}")
        elif rp_task.exit_code is None:
            task["exception"] = TaskExecutionError(task["uid"], f"RADICAL-Pilot: {reason}", None)
        return _FAILED

    # -- failures of the pilot and of Raptor -------------------------------------------------

    def _on_pilot_state(self, pilot: Any, state: str) -> None:
        if state not in self._rp.FINAL or self._closing:
            return
        self._pilot_failure = failure_reason(pilot)
        log.error("radical backend: %s", self._pilot_failure)
        self._fail_all(lambda task: True, f"the pilot has ended.\n{self._pilot_failure}")

    def _raptor_ended(self, rp_task: Any) -> None:
        if self._closing or self._raptor_failure is not None:
            return
        self._raptor_failure = (
            f"Raptor {rp_task.uid} ended {rp_task.state}: {_rp_reason(rp_task)}{_stderr_tail(rp_task)}")
        log.error("radical backend: %s", self._raptor_failure)
        self._fail_all(lambda task: task["function"] is not None, self._raptor_failure)

    def _fail_all(self, which: Any, reason: str) -> None:
        def error(task: Task) -> BaseException:
            if task["function"] is not None:
                return RuntimeError(f"radical backend: {reason}")
            return TaskExecutionError(task["uid"], f"RADICAL-Pilot: {reason}", None)

        self.fail_in_flight(error, where=lambda entry: which(entry.task))

    # -- cancel and timeouts -----------------------------------------------------------------

    async def cancel_task(self, task: Task) -> bool:
        """Ask RP to cancel the task; ``True`` unless it has already ended.

        RP kills a running executable's process group (each RP task runs in its own session).
        """
        if task["function"] is not None:
            # Raptor does not report cancellations of calls reliably: the task ends here; a
            # call already running in the worker may finish, its result is dropped.
            entry = self.in_flight.pop_task(task)
        else:
            entry = self.in_flight.cancel(task)  # RP reports the CANCELED state
        if entry is None:
            return False
        self._tmgr.cancel_tasks([entry.key])
        if task["function"] is not None:
            self.report([(task, _CANCELED)])
        return True

    def _expire(self, uid: str) -> None:
        entry = self.in_flight.pop(uid)
        if entry is None:
            return
        task = entry.task
        task["exception"] = TimeoutError(
            f"task {task['uid']} ran longer than its timeout of {task['timeout']} s")
        self._tmgr.cancel_tasks([uid])
        self.report([(task, _FAILED)])

    # -- shutdown ----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Cancel this backend's unfinished tasks, then close what the backend created.

        Bounded: RP gets ``15 s`` to report the cancellations; closing an RP session takes a few
        seconds more. Tasks RP did not report by then end ``CANCELED`` through the session.
        """
        left = []
        for entry in self.in_flight:
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
            entry.cancelling = True
            left.append(entry.key)
        self._closing = True  # the pilot or Raptor ending from here on is no failure
        if self._tmgr is not None and (left or self._raptor_parts):
            # The Raptor master and workers are tasks this backend started in the pilot.
            self._tmgr.cancel_tasks(left + self._raptor_uids)
            deadline = time.monotonic() + _CANCEL_GRACE
            while self.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        self._closing = True
        self.in_flight.pop_all()
        await asyncio.to_thread(self._teardown)

    def _teardown(self) -> None:
        self._closing = True
        session_dir = Path(self._session.path) if self._owns_session and self._session else None
        pilot_sandbox = local_path(self._pilot.pilot_sandbox) if self._owns_pilot and self._pilot else None
        session_sandbox = local_path(self._pilot.session_sandbox) if self._owns_session and self._pilot else None
        # The agent also makes a per-session directory in the node-local scratch path (/tmp).
        lfs = (self._pilot.resource_details or {}).get("lfs_path") if self._pilot else None
        session_scratch = (Path(lfs) / self._session.uid
                           if lfs and session_sandbox is not None and self._session else None)
        rp = self._rp
        if self._owns_pilot and self._pilot is not None and self._pilot.state not in (
                rp.PMGR_ACTIVE, *rp.FINAL):
            # A pilot that is still starting never hears RP's cancel message, and its agent
            # would outlive the session: have the launcher kill the pilot job first.
            self._pmgr.kill_pilots(self._pilot.uid, _timeout=15)
        if self._pilot is not None and not self._owns_pilot and self._pilot_callback is not None:
            self._pilot.unregister_callback(self._pilot_callback)
            self._pilot_callback = None
        if self._tmgr is not None and not self._owns_session:
            self._tmgr.close()
        if self._owns_session and self._session is not None:
            self._session.close(terminate=True, download=False)
        elif self._owns_pilot and self._pmgr is not None:
            self._pmgr.close(terminate=True)
        if self._cleanup and (self._owns_session or self._owns_pilot):
            left = wait_for_session_processes(
                self._session.uid, _CANCEL_GRACE,
                None if self._owns_session else self._pilot.uid)
            if left:
                log.warning("radical backend: pilot processes %s still run; sandbox kept", left)
                return
            if self._owns_session:
                remove_tree(session_sandbox)
                remove_tree(session_dir)
                remove_tree(session_scratch)
            elif self._owns_pilot:
                remove_tree(pilot_sandbox)
        self._tmgr = self._pmgr = None


# Variables a literal `$` or backquote in an argument is rewritten to (see _literal).
_LITERAL_VARS = {"RHAPSODY_DOLLAR": "$", "RHAPSODY_BACKQUOTE": "`"}


def _literal(argument: str) -> str:
    # Inside RP's double quotes only a parameter expansion yields a bare `$` or backquote (RP
    # doubles every backslash we could add).
    return argument.replace("$", "${RHAPSODY_DOLLAR}").replace("`", "${RHAPSODY_BACKQUOTE}")


def _export_value(value: str) -> str:
    # Escapes for the double-quoted `export K="value"` line RP writes verbatim.
    for char in ("\\", '"', "$", "`"):
        value = value.replace(char, "\\" + char)
    return value


def _rp_reason(rp_task: Any) -> str:
    exception = str(rp_task.exception or "no exception recorded")
    detail = (rp_task.exception_detail or "").strip()
    last = detail.splitlines()[-1] if detail else ""
    message = last.split(": ", 1)[-1]
    return f"{exception} ({last})" if last and message not in exception else exception


def _stderr_tail(rp_task: Any) -> str:
    return f"\nstderr:\n{rp_task.stderr.strip()[-2000:]}" if rp_task.stderr else ""


