"""The Raptor worker class the backend starts (loaded by RP from this file, inside the pilot).

Two changes to RP's DefaultWorker, each closing a way for function calls to wait forever:

- DefaultWorker starts receiving requests before its constructor has set up what handling a
  request needs (``_rlock``, ``_resources``, ...): a request that arrives in that window kills the
  worker's request listener (AttributeError) and every later call then waits. Requests wait here
  until the constructor has finished.
- DefaultWorker runs each call in a grandchild process that reports its own result. A call that
  ends that process (``os._exit``, a signal, a crash in C code) reports nothing: the call never
  ends and its core is never given back, so every later call waits behind it. Here the call's
  process only sends its outcome back to the dispatch process, which reports exactly one result
  per call, a failure naming the exit code when the outcome never came.

Importing rhapsody's call runner and cloudpickle here, once, lets every forked call inherit them.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing as mp
import os
import threading
import traceback
from typing import Any

import cloudpickle  # noqa: F401 - preloaded for the forked calls
import radical.pilot as rp

from rhapsody_radical import functions  # also preloaded for the forked calls
from rhapsody_radical._compat import worker_result_queue


class RhapsodyWorker(rp.raptor.DefaultWorker):  # type: ignore[misc]
    """RP's DefaultWorker with no start-up race, one result for every call, and a preloaded runner."""

    def __init__(self, raptor_id: str) -> None:
        self._rhapsody_ready = threading.Event()
        super().__init__(raptor_id)
        self._rhapsody_ready.set()

    def _request_cb(self, tasks: Any) -> Any:
        self._rhapsody_ready.wait()
        return super()._request_cb(tasks)

    def _dispatch(self, task: dict[str, Any], env: dict[str, str]) -> None:
        # The dispatch process DefaultWorker forks for each call: it must put exactly one result
        # on the worker's result queue, whatever happens to the call.
        task["pid"] = os.getpid()
        os.environ.update(env)
        os.environ.update({k: str(v) for k, v in (task.get("environment") or {}).items()})
        receiver, sender = mp.Pipe(duplex=False)
        call = mp.Process(target=self._call, args=(task, sender), daemon=True)
        call.start()
        sender.close()  # the call holds the only sending end: its death reads as EOF here
        try:
            outcome = receiver.recv()
        except EOFError:
            outcome = None
        call.join()
        if outcome is None:
            message = functions.lost_call_message(call.exitcode)
            outcome = (None, message, 1, None, [f"RuntimeError({message!r})", None])
        results = worker_result_queue(self)
        results.put([task, *outcome])
        results.close()
        results.join_thread()
        # Skip interpreter clean-up: it flushes streams whose locks another thread of the
        # worker may have held when this process was forked.
        os._exit(0)

    def _call(self, task: dict[str, Any], sender: Any) -> None:
        try:
            sandbox = task["task_sandbox_path"]
            os.makedirs(sandbox, exist_ok=True)
            os.chdir(sandbox)
            result = self.get_dispatcher(task["description"]["mode"])(task)
            outcome = asyncio.run(result) if inspect.iscoroutine(result) else result
        except Exception as exc:  # noqa: BLE001 - the dispatch process reports it as the call's failure
            outcome = (None, None, 1, None, [repr(exc), traceback.format_exc()])
        sender.send(tuple(outcome))
        sender.close()
