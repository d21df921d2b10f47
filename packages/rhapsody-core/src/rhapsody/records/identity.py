"""Task identity for the journal: which task of a new run is "the same" as one recorded before.

A task's identity is

- its ``uid``, when the program gave one (``ComputeTask(..., uid="step-3")``): a uid rhapsody
  generated (``task.<pid>.<n>``) differs in every run and is never used;
- otherwise a content key, the SHA-256 of:

  - a function task: the function's ``__module__`` and ``__qualname__`` and its positional and
    keyword arguments, pickled with cloudpickle (keyword arguments sorted by name). Not covered:
    the function's body, its globals, the files it reads, its ``timeout``, ``retries`` and
    backend options. Two lambdas of one module with the same arguments share a key; give such
    tasks a uid.
  - an executable task: the executable as written, its ``arguments``, and its ``cwd``, ``env``
    and ``shell`` options (``task_backend_specific_kwargs``). Not covered: the program's file
    contents, ``PATH``, the environment it inherits, the files it reads.
  - an AI task: its prompt(s), model, system prompt, sampling parameters, stop strings and
    inference endpoint.

Arguments whose pickled bytes differ from run to run (a ``set`` of strings under hash
randomisation, an object whose pickle holds a memory address) give a new key in each run: such
a task runs again, it is never restored with another task's results. A task whose arguments
cannot be pickled at all has no key and always runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import cloudpickle

from ..task import Task

_GENERATED_UID = re.compile(r"task\.\d+\.\d+")
_AI_FIELDS = ("prompt", "model", "system_prompt", "temperature", "max_tokens", "top_p", "top_k",
              "stop", "inference_endpoint")


def task_key(task: Task) -> str | None:
    """The task's identity as a string (``"uid:..."`` or ``"sha256:..."``), or ``None`` when it
    has none (arguments that cannot be pickled)."""
    uid = task["uid"]
    if not _GENERATED_UID.fullmatch(uid):
        return f"uid:{uid}"
    kind = task.kind
    if kind == "function":
        function = task["function"]
        module = getattr(function, "__module__", None)
        qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
        try:
            payload = cloudpickle.dumps(
                (task["args"], sorted(task["kwargs"].items())), protocol=5)
        except Exception:
            return None
        parts: tuple[Any, ...] = ("function", module, qualname, payload)
    elif kind == "executable":
        options = task["task_backend_specific_kwargs"]
        env = options.get("env")
        cwd = options.get("cwd")
        parts = ("executable", task["executable"], list(task["arguments"]),
                 None if cwd is None else str(cwd),
                 None if env is None else sorted(env.items()), bool(options.get("shell", False)))
    else:
        try:
            request = json.dumps({name: task[name] for name in _AI_FIELDS}, sort_keys=True)
        except (TypeError, ValueError):
            return None
        parts = ("ai", request)
    return "sha256:" + hashlib.sha256(repr(parts).encode()).hexdigest()
