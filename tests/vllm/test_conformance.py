"""rhapsody-vllm passes the core's AI conformance kit, against a vLLM server it starts itself."""

from __future__ import annotations

import pytest
from vllm_support import ENGINE_MISSING, TINY_ENGINE_OPTIONS

from rhapsody import BaseBackend
from rhapsody.testing import AIBackendConformance
from rhapsody_vllm import VLLMBackend

pytestmark = pytest.mark.skipif(ENGINE_MISSING is not None, reason=ENGINE_MISSING or "")


class TestVLLMConformance(AIBackendConformance):
    model = "tiny"
    # Server start-up is ~30 s on an idle 2-core machine, minutes when it is busy.
    task_timeout = 900.0

    def make_backend(self, request: pytest.FixtureRequest) -> BaseBackend:
        tiny_model = request.getfixturevalue("tiny_model")
        return VLLMBackend(model=str(tiny_model), served_model_name="tiny", **TINY_ENGINE_OPTIONS)
