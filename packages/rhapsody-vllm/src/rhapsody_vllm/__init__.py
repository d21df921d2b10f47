"""rhapsody-vllm: run rhapsody AITasks on vLLM (a server it starts, or running endpoints).

>>> import rhapsody
>>> backend = rhapsody.get_backend("vllm", inference_endpoint="http://127.0.0.1:8000/v1")

The ``vllm`` engine is optional (``pip install rhapsody-vllm[gpu]`` or ``[cpu]``); this package
never imports it: an owned server runs it in its own process.
"""

from __future__ import annotations

from .backend import VLLMBackend
from .errors import EngineDiedError, InferenceError
from .server import engine_flags, engine_status, normalize_endpoint

__all__ = [
    "EngineDiedError",
    "InferenceError",
    "VLLMBackend",
    "engine_flags",
    "engine_status",
    "normalize_endpoint",
]
