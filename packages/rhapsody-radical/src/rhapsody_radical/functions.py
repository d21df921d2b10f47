"""Function tasks through Raptor: what travels to a Raptor worker and what comes back.

A Raptor worker calls whatever callable a task names and returns its value through RP's message
channels, which carry plain data, and reports an exception only as its ``repr``. rhapsody promises
the original return value and the original exception object, so the user's call is pickled
(cloudpickle, which carries ``__main__`` functions by value) and wrapped in :func:`run_packed` /
:func:`run_packed_async`. Those run in the worker, call the function, and return one base64 text
that holds either the value or the exception; :func:`unpack_outcome` turns it back on the client.

This module is imported by Raptor workers, once per call (the worker forks a process for every
task): it must stay light. It imports neither ``radical.pilot`` nor the backend, and cloudpickle
only where plain pickle cannot do (what cloudpickle writes, plain ``pickle.loads`` reads).
"""

from __future__ import annotations

import base64
import pickle
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_OK = "ok"
_RAISED = "raised"


def pack_call(function: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """Serialise one call for a worker.

    Raises:
        Exception: whatever cloudpickle raises when the function or an argument cannot be pickled.
    """
    import cloudpickle  # carries __main__ functions, lambdas and closures by value

    return base64.b64encode(cloudpickle.dumps((function, tuple(args), dict(kwargs)))).decode()


def _encode(kind: str, payload: Any) -> str:
    try:
        data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - e.g. a lambda in the result: cloudpickle can
        import cloudpickle

        data = cloudpickle.dumps((kind, payload))
    return base64.b64encode(data).decode()


def _encode_exception(exc: BaseException) -> str:
    try:
        return _encode(_RAISED, exc)
    except Exception:  # noqa: BLE001 - an unpicklable exception still has to reach the caller
        text = "".join(traceback.format_exception(exc))
        return _encode(_RAISED, RuntimeError(f"{type(exc).__name__}: {exc}\n{text}"))


def run_packed(packed: str) -> str:
    """Worker side, for plain functions: run the packed call, return the packed outcome."""
    try:
        function, args, kwargs = pickle.loads(base64.b64decode(packed))
        value = function(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - every outcome, even SystemExit, goes back
        return _encode_exception(exc)
    try:
        return _encode(_OK, value)
    except Exception as exc:  # noqa: BLE001 - an unpicklable result is the task's failure
        return _encode_exception(TypeError(f"the function's return value cannot be pickled: {exc}"))


async def run_packed_async(packed: str) -> str:
    """Worker side, for ``async def`` functions (the Raptor worker awaits coroutine functions)."""
    try:
        function, args, kwargs = pickle.loads(base64.b64decode(packed))
        value = await function(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001
        return _encode_exception(exc)
    try:
        return _encode(_OK, value)
    except Exception as exc:  # noqa: BLE001
        return _encode_exception(TypeError(f"the function's return value cannot be pickled: {exc}"))


def unpack_outcome(text: Any) -> tuple[bool, Any]:
    """Client side: ``(True, value)`` or ``(False, exception)`` from a worker's return value.

    Raises:
        ValueError: ``text`` is not something :func:`run_packed` produced.
    """
    if not isinstance(text, str):
        raise ValueError(f"Raptor returned {type(text).__name__}, not a packed rhapsody outcome")
    kind, payload = pickle.loads(base64.b64decode(text))
    if kind == _OK:
        return True, payload
    if kind == _RAISED:
        return False, payload
    raise ValueError(f"unknown packed outcome kind {kind!r}")


# How our Raptor worker reports a call whose process died before the call returned, and how the
# backend reads the exit status back from RP's exception text (RP carries text, not objects).
_LOST_CALL = re.compile(r"the process running the function (?:exited with code (-?\d+)|was killed by signal (\d+))")


def lost_call_message(exit_code: int | None) -> str:
    """The failure a Raptor worker reports for a call whose process ended without an outcome."""
    if exit_code is not None and exit_code < 0:
        how = f"was killed by signal {-exit_code}"
    else:
        how = f"exited with code {exit_code}"
    return f"the process running the function {how} before the function returned"


def lost_call_exit_code(reason: str) -> int | None:
    """The exit status in a :func:`lost_call_message` found in ``reason`` (negative: a signal)."""
    found = _LOST_CALL.search(reason)
    if found is None:
        return None
    code, signal_number = found.groups()
    return int(code) if code is not None else -int(signal_number)
