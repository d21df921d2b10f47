"""Owned mode: the backend starts vLLM for the tiny model, runs AITasks on it, and stops it.

One server for the whole module (start-up takes ~30 s on two cores); the last test closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from vllm_support import ENGINE_MISSING, LONG, TINY_ENGINE_OPTIONS, run, settle

from rhapsody import AITask, Session
from rhapsody_vllm import InferenceError, VLLMBackend
from rhapsody_vllm.server import group_members

pytestmark = [
    pytest.mark.skipif(ENGINE_MISSING is not None, reason=ENGINE_MISSING or ""),
    pytest.mark.asyncio(loop_scope="module"),
]

GREEDY = {"temperature": 0.0}
EXACT = {"task_backend_specific_kwargs": {"extra_body": {"ignore_eos": True}}}


API_KEY = "owned-test-key"


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("owned") / "vllm-server.log"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def owned(tiny_model: Path, server_log: Path) -> AsyncIterator[tuple[Session, VLLMBackend]]:
    backend = VLLMBackend(model=str(tiny_model), served_model_name="tiny", api_key=API_KEY,
                          server_log=str(server_log), **TINY_ENGINE_OPTIONS)
    session = Session(backends=[backend])
    await session.start()
    try:
        yield session, backend
    finally:
        await session.close()


async def test_server_started_and_serves_the_model(owned: tuple[Session, VLLMBackend]) -> None:
    _, backend = owned
    server = backend.server
    assert server is not None and server.pid is not None
    assert backend.models == {"tiny": server.base_url}
    assert server.pid in group_members(server.pid)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient() as client:
        listed = (await client.get(f"{server.base_url}/models", headers=auth)).json()
        # api_key reached the server as --api-key: without it, requests are refused.
        assert (await client.get(f"{server.base_url}/models")).status_code == 401
    assert [entry["id"] for entry in listed["data"]] == ["tiny"]
    assert listed["data"][0]["max_model_len"] == 256  # engine option passed through


async def test_result_fields_are_set(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    (task,) = await run(session, [AITask("the model runs", max_tokens=8, **GREEDY)])
    assert task.state == "DONE", task.exception
    assert isinstance(task.response, str) and task.response
    assert task.return_value == task.response
    assert task.finish_reason in ("stop", "length")
    assert set(task.usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert task.usage["total_tokens"] == task.usage["prompt_tokens"] + task.usage["completion_tokens"]
    assert 1 <= task.usage["completion_tokens"] <= 8
    assert await task is task  # the future resolved to the task itself


async def test_max_tokens_bounds_the_output(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    exact = [AITask("the model runs", max_tokens=n, **GREEDY, **EXACT) for n in (1, 5, 17)]
    free = [AITask("the model runs", max_tokens=n, **GREEDY) for n in (1, 5, 17)]
    await run(session, exact + free)
    assert [t.usage["completion_tokens"] for t in exact] == [1, 5, 17]
    assert [t.finish_reason for t in exact] == ["length"] * 3
    for task, n in zip(free, (1, 5, 17)):
        assert task.usage["completion_tokens"] <= n
    # Greedy decoding: a shorter answer is the start of a longer one.
    assert exact[2].response.startswith(exact[1].response)


async def test_greedy_output_is_repeatable(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    first = [AITask("simulation data flows", max_tokens=24, **GREEDY) for _ in range(3)]
    await run(session, first)
    (again,) = await run(session, [AITask("simulation data flows", max_tokens=24, **GREEDY)])
    assert len({t.response for t in first} | {again.response}) == 1
    assert again.usage == first[0].usage


async def test_stop_ends_the_output(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    (full,) = await run(session, [AITask("the model runs", max_tokens=40, **GREEDY, **EXACT)])
    words = [w for w in full.response.split() if len(w) >= 3]
    # A word that first occurs after the start, so the stopped answer is a non-empty prefix.
    stop = next(w for w in words if full.response.index(w) > 0)
    cut = full.response.index(stop)
    (stopped,) = await run(session, [AITask("the model runs", max_tokens=40, stop=[stop], **GREEDY)])
    assert stopped.finish_reason == "stop"
    assert stopped.response == full.response[:cut]
    assert stopped.usage["completion_tokens"] < full.usage["completion_tokens"]
    (as_str,) = await run(session, [AITask("the model runs", max_tokens=40, stop=stop, **GREEDY)])
    assert as_str.response == stopped.response


async def test_sampling_parameters_are_honoured(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    prompt = "many nodes while"

    def sampled(seed: int, **params: object) -> AITask:
        return AITask(prompt, max_tokens=24, temperature=1.0,
                      task_backend_specific_kwargs={"extra_body": {"seed": seed}}, **params)

    greedy, s1, s1_again, s2, k1, p_tiny = await run(session, [
        AITask(prompt, max_tokens=24, **GREEDY),
        sampled(1), sampled(1), sampled(2),
        sampled(3, top_k=1),  # only the most likely token left: greedy
        sampled(4, top_p=1e-6),  # nucleus of one token: greedy
    ])
    assert s1.response == s1_again.response  # the seed (extra_body) reaches vLLM
    assert s1.response != s2.response != greedy.response  # temperature 1 samples
    assert k1.response == greedy.response
    assert p_tiny.response == greedy.response


async def test_system_prompt_is_sent_as_system_message(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    plain, with_system = await run(session, [
        AITask("hi", max_tokens=4, **GREEDY),
        AITask("hi", max_tokens=4, system_prompt="answer briefly", **GREEDY),
    ])
    # The chat template renders "system: answer briefly\n" in front of the user turn.
    assert with_system.usage["prompt_tokens"] > plain.usage["prompt_tokens"]
    (raw,) = await run(session, [AITask("hi", max_tokens=4, **GREEDY,
                                        task_backend_specific_kwargs={"api": "completions"})])
    # Without the chat template the prompt is just "<s>hi".
    assert raw.usage["prompt_tokens"] < plain.usage["prompt_tokens"]


async def test_list_of_prompts(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    prompts = ["the model runs", "simulation data", "back again quickly"]
    chat, completions = await run(session, [
        AITask(prompts, max_tokens=6, **GREEDY, **EXACT),
        AITask(prompts, max_tokens=6, **GREEDY,
               task_backend_specific_kwargs={"api": "completions",
                                             "extra_body": {"ignore_eos": True}}),
    ])
    singles = await run(session, [AITask(p, max_tokens=6, **GREEDY, **EXACT) for p in prompts])
    assert chat.response == [t.response for t in singles]  # in prompt order
    assert chat.finish_reason == ["length"] * 3
    assert chat.usage["completion_tokens"] == 18
    assert chat.usage["prompt_tokens"] == sum(t.usage["prompt_tokens"] for t in singles)
    assert len(completions.response) == 3 and completions.usage["completion_tokens"] == 18
    assert completions.return_value == completions.response


async def test_dozens_in_flight_at_once(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    tasks = [AITask(f"task {i % 6} of the workload", max_tokens=12, **GREEDY, **EXACT)
             for i in range(60)]
    await session.submit_tasks(tasks)
    assert session.in_flight == 60  # all handed over at once, none waited for
    await session.wait_tasks(tasks, timeout=180)
    assert {t.state for t in tasks} == {"DONE"}
    assert all(t.usage["completion_tokens"] == 12 for t in tasks)
    # Batched together or not, greedy answers depend only on the prompt.
    for i in range(6):
        assert len({t.response for t in tasks[i::6]}) == 1


async def test_server_error_fails_only_its_task(owned: tuple[Session, VLLMBackend]) -> None:
    session, backend = owned
    good1, bad, good2 = tasks = [
        AITask("a", max_tokens=3, **GREEDY),
        AITask("b", max_tokens=300, **GREEDY),  # more than max_model_len=256
        AITask("c", max_tokens=3, **GREEDY),
    ]
    await run(session, tasks)
    assert (good1.state, bad.state, good2.state) == ("DONE", "FAILED", "DONE")
    exc = bad.exception
    assert isinstance(exc, InferenceError)
    assert exc.status == 400 and exc.endpoint == backend.server.base_url
    assert "max_tokens=300 cannot be greater than max_model_len=256" in exc.detail
    assert bad.uid in str(exc)
    with pytest.raises(InferenceError, match="max_model_len=256"):
        await bad


async def test_out_of_range_temperature(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    with pytest.raises(ValueError, match=r"temperature must be in \[0.0, 2.0\], got 5"):
        AITask("x", temperature=5)
    # A task edited after construction reaches vLLM, whose own message fails just that task.
    task = AITask("x", max_tokens=2)
    task.temperature = 5.0
    (task,) = await run(session, [task])
    assert task.state == "FAILED"
    assert task.exception.status == 400
    assert "temperature must be in [0, 2], got 5.0" in str(task.exception)


async def test_empty_prompt(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    with pytest.raises(ValueError, match="prompt must not be empty"):
        AITask("")
    with pytest.raises(ValueError, match="non-empty string or a non-empty list"):
        AITask([])
    task = AITask("x", max_tokens=2, task_backend_specific_kwargs={"api": "completions"})
    task.prompt = ""
    (task,) = await run(session, [task])
    assert task.state == "FAILED"
    assert "Either prompt or prompt_embeds must be provided and non-empty" in str(task.exception)


async def test_unknown_model_is_refused_at_submit(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    fine = AITask("x", max_tokens=2)
    unknown = AITask("x", model="llama-70b", max_tokens=2)
    with pytest.raises(ValueError, match=r"unknown model 'llama-70b'; this vllm backend serves: tiny"):
        await session.submit_tasks([fine, unknown])
    # Nothing of the call was submitted; the session keeps working.
    assert fine.state == "NEW" and fine.future is None
    (fine,) = await run(session, [fine])
    assert fine.state == "DONE"
    (named,) = await run(session, [AITask("x", model="tiny", max_tokens=2)])
    assert named.state == "DONE"


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"temprature": 1}, ValueError, r"key 'temprature' is not a vllm backend option \(it takes: api, extra_body, timeout\)"),
    ({"api": "responses"}, ValueError, r"\['api'\] must be 'chat' or 'completions', got 'responses'"),
    ({"extra_body": {"max_tokens": 3}}, ValueError, r"may not set 'max_tokens'; use the AITask field"),
    ({"extra_body": "seed=1"}, TypeError, r"\['extra_body'\] must be a dict, not str"),
    ({"timeout": -1}, ValueError, r"\['timeout'\] must be a positive number of seconds, got -1"),
])
async def test_bad_task_options_are_refused_at_submit(
    owned: tuple[Session, VLLMBackend], options: dict, error: type, message: str
) -> None:
    session, _ = owned
    task = AITask("x", max_tokens=2, task_backend_specific_kwargs=options)
    with pytest.raises(error, match=message):
        await session.submit_tasks([task])
    assert task.state == "NEW"


async def test_system_prompt_needs_the_chat_api(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    task = AITask("x", system_prompt="s", task_backend_specific_kwargs={"api": "completions"})
    with pytest.raises(ValueError, match="system_prompt needs the chat API"):
        await session.submit_tasks([task])


async def test_request_timeout_fails_the_task(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    task = AITask("x", max_tokens=250, task_backend_specific_kwargs={
        "timeout": 0.001, "extra_body": {"ignore_eos": True}})
    (task,) = await run(session, [task])
    assert task.state == "FAILED"
    assert isinstance(task.exception, TimeoutError)
    assert "gave no answer within 0.001 s" in str(task.exception)


async def test_cancel_in_flight_requests(owned: tuple[Session, VLLMBackend]) -> None:
    session, _ = owned
    tasks = [AITask(f"long {i}", **LONG) for i in range(40)]
    await session.submit_tasks(tasks)
    await settle(0.3)
    assert await session.cancel_task(tasks[0]) is True
    assert tasks[0].state == "CANCELED"
    assert tasks[0].future.cancelled()
    results = await asyncio.gather(*(session.cancel_task(t) for t in tasks[1:]))
    await session.wait_tasks(tasks, timeout=60)
    for task, cancelled in zip(tasks[1:], results):
        assert task.state == ("CANCELED" if cancelled else "DONE")
    assert await session.cancel_task(tasks[0]) is True  # already cancelled: still reports it
    # The server is still healthy after dozens of aborted requests.
    (after,) = await run(session, [AITask("x", max_tokens=2)])
    assert after.state == "DONE"


async def test_close_stops_the_whole_process_group(
    owned: tuple[Session, VLLMBackend], server_log: Path
) -> None:
    session, backend = owned
    server = backend.server
    assert server is not None and server.pid is not None
    pgid = server.pid
    assert len(group_members(pgid)) >= 3  # API server, engine core, worker (at least)
    await session.close()
    assert group_members(pgid) == []
    assert server._watcher is not None and server._watcher.done()  # nothing left on the loop
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{server.base_url}/models")
    await backend.close()  # idempotent
    # A log file the user named is theirs: it stays, with the server's output in it.
    assert "Application startup complete" in server_log.read_text()
