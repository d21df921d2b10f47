"""``VLLMBackend``: runs AITasks on vLLM through its OpenAI-compatible HTTP API.

Two ways to run, combinable in one backend:

* owned: ``VLLMBackend(model="meta-llama/...", tensor_parallel_size=2, ...)`` starts a vLLM server
  for that model in its own process group and stops the whole group on close;
* endpoint: ``VLLMBackend(inference_endpoint="http://host:8000/v1")`` sends requests to servers
  someone else runs (a task's own ``inference_endpoint`` overrides the backend's).

Each task's ``model`` is routed to the service that serves it (asked with ``GET /v1/models`` at
start-up); an unknown model is refused at submit. Requests go out concurrently over one pooled
``httpx.AsyncClient``; vLLM batches whatever is in flight. The hot path, submit -> request ->
result -> report, is this file from :meth:`VLLMBackend.submit_tasks` downwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import httpx

from rhapsody import BaseBackend, Task

from .errors import EngineDiedError, InferenceError
from .server import OwnedServer, engine_flags, engine_status, normalize_endpoint

Api = Literal["chat", "completions"]

_TASK_OPTIONS = frozenset({"api", "extra_body", "timeout"})
# Request fields that come from AITask fields or from the backend; extra_body may not set them.
_RESERVED_BODY = frozenset({
    "model", "messages", "prompt", "stream", "n",
    "temperature", "max_tokens", "top_p", "top_k", "stop",
})
_SAMPLING_FIELDS = ("temperature", "max_tokens", "top_p", "top_k", "stop")
# After a transport error on an owned server, how long to wait for its exit to be noticed, so the
# task reports the engine's death instead of a bare "connection reset".
_DEATH_GRACE = 3.0


class _Service:
    """One OpenAI-compatible server: where it is, what it serves, what is in flight on it."""

    __slots__ = ("base_url", "models", "server", "inflight", "death")

    def __init__(self, base_url: str, models: frozenset[str], server: OwnedServer | None) -> None:
        self.base_url = base_url
        self.models = models
        self.server = server
        self.inflight: set[asyncio.Task[None]] = set()
        self.death: str | None = None


class VLLMBackend(BaseBackend):
    """Runs AITasks on vLLM: a server it starts and owns, and/or existing endpoints.

    Args:
        model: a model path or Hugging Face id; the backend then starts a vLLM server for it
            (``python -m vllm.entrypoints.openai.api_server``) and stops it on close.
        served_model_name: the name tasks use for that model (default: ``model``). Tasks
            without a ``model`` use it.
        inference_endpoint: URL (or list of URLs) of running OpenAI-compatible servers, e.g.
            ``"http://node12:8000/v1"``; their models are routed to them.
        api: ``"chat"`` (default: the model's chat template applies, ``system_prompt`` becomes
            the system message) or ``"completions"`` (raw prompt text; a list of prompts goes in
            one request). Per task: ``task_backend_specific_kwargs={"api": ...}``.
        api_key: sent as a bearer token (and given to the owned server as ``--api-key``).
        max_connections: HTTP connections kept to each server; more requests wait in order.
        request_timeout: seconds a request may take before its task fails (default: no limit).
        startup_timeout: seconds the owned server may take to become ready.
        shutdown_timeout: seconds between SIGTERM and SIGKILL of the owned server's group.
        host, port: where the owned server listens (default: 127.0.0.1, a free port).
        python: the interpreter that runs the owned server (default: this one).
        server_env: extra environment variables for the owned server (e.g.
            ``{"VLLM_CPU_KVCACHE_SPACE": "4"}``).
        server_log: file that receives the owned server's output (default: a temporary file,
            quoted in error messages and removed on close).
        server_args: further command-line arguments for the owned server, verbatim.
        name: this instance's name in a session (default ``"vllm"``): a session may hold one
            instance per server, each chosen by tasks with ``backend=``.
        **engine_options: vLLM engine options for the owned server, e.g.
            ``tensor_parallel_size=2, max_model_len=8192, dtype="bfloat16"``; they become
            ``--tensor-parallel-size 2 ...`` (``True`` -> ``--flag``, ``False`` -> ``--no-flag``).

    Per-task options (``task_backend_specific_kwargs``): ``api``; ``extra_body`` (a dict of
    further vLLM sampling fields such as ``seed``, ``min_p``, ``ignore_eos``,
    ``repetition_penalty``); ``timeout`` (seconds).

    Results: ``task.response`` (text, or a list of texts for a list of prompts), ``finish_reason``
    (``"stop"`` or ``"length"``, a list for a list of prompts), ``usage`` (``prompt_tokens``,
    ``completion_tokens``, ``total_tokens``, summed over the prompts); ``return_value`` is
    ``response``. A failed request fails only its task: ``task.exception`` is an
    :class:`~rhapsody_vllm.InferenceError` carrying the server's own message, or an
    :class:`~rhapsody_vllm.EngineDiedError` when the owned server died.

    Raises:
        ValueError: a bad option value (e.g. engine options without ``model``, a bad URL).
        TypeError: an option of the wrong type.
    """

    name = "vllm"
    task_kinds: ClassVar[frozenset[str]] = frozenset({"ai"})

    def __init__(
        self,
        *,
        model: str | None = None,
        served_model_name: str | None = None,
        inference_endpoint: str | Sequence[str] | None = None,
        api: Api = "chat",
        api_key: str | None = None,
        max_connections: int = 512,
        request_timeout: float | None = None,
        startup_timeout: float = 900.0,
        shutdown_timeout: float = 10.0,
        host: str = "127.0.0.1",
        port: int | None = None,
        python: str | None = None,
        server_env: Mapping[str, str] | None = None,
        server_log: str | None = None,
        server_args: Sequence[str] = (),
        name: str | None = None,
        **engine_options: Any,
    ) -> None:
        super().__init__(name=name)
        if model is not None and not isinstance(model, str):
            raise TypeError(f"VLLMBackend: model must be a string, got {model!r}")
        if model is None:
            started_only = {"served_model_name": served_model_name, "port": port,
                            "python": python, "server_env": server_env,
                            "server_log": server_log, "server_args": server_args or None,
                            **engine_options}
            given = sorted(k for k, v in started_only.items() if v is not None)
            if given:
                raise ValueError(
                    f"VLLMBackend: {', '.join(given)} only apply when the backend starts vLLM "
                    "itself; pass model= too"
                )
        endpoints = [inference_endpoint] if isinstance(inference_endpoint, str) else list(
            inference_endpoint or ())
        self._endpoints = [normalize_endpoint(url) for url in endpoints]
        _check_api(api, "VLLMBackend: api")
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"VLLMBackend: max_connections must be >= 1, got {max_connections!r}")
        _check_timeout(request_timeout, "VLLMBackend: request_timeout")
        _check_timeout(startup_timeout, "VLLMBackend: startup_timeout")
        _check_timeout(shutdown_timeout, "VLLMBackend: shutdown_timeout")
        # Checked now so a bad option fails here, not after a server start-up.
        engine_flags(engine_options)
        self._model = model
        self._served = served_model_name or model
        self._api: Api = api
        self._api_key = api_key
        self._max_connections = max_connections
        self._request_timeout = request_timeout
        self._startup_timeout = startup_timeout
        self._shutdown_timeout = shutdown_timeout
        self._host = host
        self._port = port
        self._python = python
        self._server_env = dict(server_env or {})
        self._server_log = server_log
        self._server_args = list(server_args)
        self._engine_options = dict(engine_options)

        self._client: httpx.AsyncClient | None = None
        self._services: dict[str, _Service] = {}
        self._connecting: dict[str, asyncio.Task[_Service]] = {}
        self._routes: dict[str, _Service] = {}
        self._default_model: str | None = None
        self._owned: _Service | None = None
        self._death_watch: asyncio.Task[None] | None = None
        self._finished: list[tuple[Task, str]] = []
        self._flush_scheduled = False
        self._event_loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    @classmethod
    def check_available(cls) -> str | None:
        """Endpoint mode needs only ``httpx``; owned mode needs the ``vllm`` engine too.

        Returns:
            ``None`` when both modes work here, else a note saying only endpoint mode does
            (and why: :func:`engine_status`), which ``rhapsody backends`` prints.

        Raises:
            ImportError: ``httpx`` is missing.
        """
        import httpx  # noqa: F401

        return engine_status()

    @classmethod
    def engine_versions(cls) -> dict[str, str]:
        """Versions of the installed vLLM distribution (``vllm`` or ``vllm-cpu``) and httpx."""
        found = {}
        for dist in ("vllm", "vllm-cpu", "httpx"):
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return found

    @property
    def server(self) -> OwnedServer | None:
        """The vLLM server this backend started, if any."""
        return self._owned.server if self._owned is not None else None

    @property
    def models(self) -> dict[str, str]:
        """Every routable model name -> the base URL of the server that serves it."""
        return {name: service.base_url for name, service in self._routes.items()}

    # -- start and stop ----------------------------------------------------------------------

    async def _initialize(self) -> None:
        """Start the owned server (if ``model`` was given) and learn every endpoint's models.

        Raises:
            ModuleNotFoundError: ``model`` was given but ``vllm`` is not installed here.
            RuntimeError, TimeoutError: the owned server died or hung during start-up (the
                message has its last log lines).
            ConnectionError: an endpoint could not be reached or did not list its models.
        """
        self._event_loop = asyncio.get_running_loop()
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else None
        # No pool timeout: requests beyond max_connections queue instead of failing. Idle
        # connections are dropped before vLLM's server closes them (VLLM_HTTP_TIMEOUT_KEEP_ALIVE,
        # 5 s): reusing one the server is closing at that moment would fail a request.
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(None, connect=30.0),
            limits=httpx.Limits(max_connections=self._max_connections,
                                max_keepalive_connections=self._max_connections,
                                keepalive_expiry=2.0),
        )
        try:
            if self._model is not None:
                await self._start_owned_server()
            for url in self._endpoints:
                await self._service_for(url)
        except BaseException:
            await self._release()
            raise
        if self._owned is not None:
            self._default_model = self._served
        elif len(self._routes) == 1:
            self._default_model = next(iter(self._routes))

    async def _start_owned_server(self) -> None:
        assert self._model is not None and self._served is not None
        if self._python is None and (why := engine_status()) is not None:
            raise ModuleNotFoundError(f"VLLMBackend(model={self._model!r}) cannot start vLLM: {why}",
                                      name="vllm")
        extra = list(self._server_args)
        if self._api_key:
            extra += ["--api-key", self._api_key]
        server = OwnedServer(
            model=self._model, served_name=self._served, host=self._host, port=self._port,
            options=self._engine_options, extra_args=extra, python=self._python,
            env=self._server_env, log_path=self._server_log,
        )
        # Registered before start so _release() stops it even if start-up is interrupted.
        self._owned = _Service(server.base_url, frozenset(), server)
        await server.start(timeout=self._startup_timeout)
        service = await self._connect(server.base_url, server)
        if self._served not in service.models:
            raise RuntimeError(
                f"vLLM server at {server.base_url} lists models {sorted(service.models)}, "
                f"not {self._served!r}"
            )
        self._owned = service
        self._death_watch = asyncio.ensure_future(self._watch_owned(service))

    async def _connect(self, base_url: str, server: OwnedServer | None = None) -> _Service:
        assert self._client is not None
        try:
            response = await self._client.get(f"{base_url}/models", timeout=30.0)
            response.raise_for_status()
            models = frozenset(entry["id"] for entry in response.json()["data"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ConnectionError(
                f"cannot list the models of inference endpoint {base_url}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        service = _Service(base_url, models, server)
        self._services[base_url] = service
        for name in sorted(models):
            # The first service to serve a name keeps it: the owned server, then endpoints in order.
            self._routes.setdefault(name, service)
        return service

    async def _service_for(self, url: str) -> _Service:
        base_url = normalize_endpoint(url)
        service = self._services.get(base_url)
        if service is not None:
            return service
        # Concurrent submits naming the same new endpoint share one model listing.
        pending = self._connecting.get(base_url)
        if pending is None:
            pending = asyncio.ensure_future(self._connect(base_url))
            self._connecting[base_url] = pending
        try:
            return await asyncio.shield(pending)
        finally:
            if pending.done():
                self._connecting.pop(base_url, None)

    async def _watch_owned(self, service: _Service) -> None:
        assert service.server is not None and service.server.exited is not None
        status = await service.server.exited
        if service.server.stopping:
            return
        service.death = (
            f"the vLLM server this backend started (pid {service.server.pid}) exited with status "
            f"{status}; {service.server.log_tail()}"
        )
        # Fail what is in flight now, not after the group is down: a request sent from here on
        # fails at its first step on `death`, so none can slip in between.
        for running in list(service.inflight):
            running.cancel()
        # Engine-core and worker processes may outlive the API server; take the group down.
        await service.server.stop(grace=0.0)

    async def _shutdown(self) -> None:
        """Cancel requests in flight (their tasks end CANCELED), stop the owned server's group."""
        requests = []
        for entry in self.in_flight:
            entry.cancelling = True
            entry.handle.cancel()
            requests.append(entry.handle)
        if requests:
            await asyncio.wait(requests, timeout=self._shutdown_timeout)
        self._flush()
        await self._release()

    async def _release(self) -> None:
        if self._death_watch is not None:
            self._death_watch.cancel()
        if self._owned is not None and self._owned.server is not None:
            await self._owned.server.stop(grace=self._shutdown_timeout)
        if self._client is not None:
            await self._client.aclose()

    # -- the hot path: submit -> request -> result -> report ---------------------------------

    async def check_tasks(self, tasks: Sequence[Task]) -> None:
        """Plan every task's request without sending it: the refusals of :meth:`submit_tasks`.

        Raises:
            ValueError, TypeError, ConnectionError: as :meth:`submit_tasks`.
        """
        for task in tasks:
            await self._plan(task)

    async def submit_tasks(self, tasks: Sequence[Task]) -> None:
        """Send every task's request(s) to the server serving its model; returns at once.

        Raises:
            ValueError: a task names a model no service here serves, has no model and the backend
                has no default, sets ``system_prompt`` with ``api="completions"``, or carries an
                unknown or bad ``task_backend_specific_kwargs`` key (named in the message).
                Nothing of the call is sent then.
            TypeError: a ``task_backend_specific_kwargs`` value of the wrong type.
            ConnectionError: a task's own ``inference_endpoint`` cannot be reached.
        """
        plans = [await self._plan(task) for task in tasks]
        create_task = self._event_loop.create_task
        add = self.in_flight.add
        for task, service, path, payloads, timeout in plans:
            request = create_task(self._run(task, service, path, payloads, timeout))
            add(task, handle=request)
            request.add_done_callback(functools.partial(self._request_done, task, service))
            service.inflight.add(request)

    def _request_done(self, task: Task, service: _Service, request: asyncio.Task[None]) -> None:
        # Every request ends here, run or not. One cancelled before its first step (or while
        # _run was explaining a lost connection) has not reported its task: that happens here.
        entry = self.in_flight.pop(task["uid"])
        if request.cancelled():
            self._finish_cancelled(task, service, cancelling=entry is not None and entry.cancelling)
        service.inflight.discard(request)

    async def _plan(self, task: Task) -> tuple[Task, _Service, str, list[dict[str, Any]], float | None]:
        uid = task["uid"]
        options = task["task_backend_specific_kwargs"]
        for key in options:
            if key not in _TASK_OPTIONS:
                raise ValueError(
                    f"task {uid}: task_backend_specific_kwargs key {key!r} is not a vllm backend "
                    f"option (it takes: {', '.join(sorted(_TASK_OPTIONS))})"
                )
        api = options.get("api", self._api)
        _check_api(api, f"task {uid}: task_backend_specific_kwargs['api']")
        extra = options.get("extra_body", {})
        if not isinstance(extra, Mapping):
            raise TypeError(
                f"task {uid}: task_backend_specific_kwargs['extra_body'] must be a dict, "
                f"not {type(extra).__name__}"
            )
        for key in extra:
            if key in _RESERVED_BODY:
                raise ValueError(
                    f"task {uid}: task_backend_specific_kwargs['extra_body'] may not set {key!r}; "
                    "use the AITask field (or the backend) instead"
                )
        timeout = options.get("timeout", self._request_timeout)
        _check_timeout(timeout, f"task {uid}: task_backend_specific_kwargs['timeout']")

        model = task["model"]
        if task["inference_endpoint"] is not None:
            service = await self._service_for(task["inference_endpoint"])
            if model is None:
                if len(service.models) != 1:
                    raise ValueError(
                        f"task {uid}: {service.base_url} serves {sorted(service.models)}; "
                        "say which with AITask(model=...)"
                    )
                model = next(iter(service.models))
            elif model not in service.models:
                raise ValueError(
                    f"task {uid}: model {model!r} is not served by {service.base_url} "
                    f"(it serves: {', '.join(sorted(service.models))})"
                )
        else:
            model = model if model is not None else self._default_model
            if model is None:
                raise ValueError(
                    f"task {uid}: no model given and this backend has no default "
                    f"(it serves: {', '.join(sorted(self._routes)) or 'nothing'}); "
                    "set AITask(model=...) or AITask(inference_endpoint=...)"
                )
            found = self._routes.get(model)
            if found is None:
                raise ValueError(
                    f"task {uid}: unknown model {model!r}; this vllm backend serves: "
                    f"{', '.join(sorted(self._routes)) or 'nothing'}"
                )
            service = found

        sampling = {name: task[name] for name in _SAMPLING_FIELDS if task[name] is not None}
        sampling.update(extra)
        prompt = task["prompt"]
        system = task["system_prompt"]
        if api == "completions":
            if system is not None:
                raise ValueError(
                    f"task {uid}: system_prompt needs the chat API; drop "
                    "task_backend_specific_kwargs={'api': 'completions'} or the system prompt"
                )
            return task, service, "/completions", [{"model": model, "prompt": prompt, **sampling}], timeout
        head = [{"role": "system", "content": system}] if system is not None else []
        prompts = [prompt] if isinstance(prompt, str) else prompt
        payloads = [
            {"model": model, "messages": [*head, {"role": "user", "content": text}], **sampling}
            for text in prompts
        ]
        return task, service, "/chat/completions", payloads, timeout

    async def _run(self, task: Task, service: _Service, path: str,
                   payloads: list[dict[str, Any]], timeout: float | None) -> None:
        uid = task["uid"]
        try:
            if service.death is not None:
                raise EngineDiedError(uid, service.base_url, None, service.death)
            requests: Awaitable[Any] = (
                self._post(uid, service, path, payloads[0]) if len(payloads) == 1
                else asyncio.gather(*(self._post(uid, service, path, p) for p in payloads))
            )
            answer = await (requests if timeout is None else asyncio.wait_for(requests, timeout))
            _fill(task, service, path, [answer] if len(payloads) == 1 else answer)
        except asyncio.CancelledError:
            entry = self.in_flight.get(uid)
            self._finish_cancelled(task, service, cancelling=entry is not None and entry.cancelling)
        except asyncio.TimeoutError:
            task["exception"] = TimeoutError(
                f"task {uid}: {service.base_url}{path} gave no answer within {timeout} s"
            )
            self._finish(task, "FAILED")
        except httpx.TransportError as exc:
            task["exception"] = await self._explain_lost(uid, service, exc)
            self._finish(task, "FAILED")
        except Exception as exc:  # noqa: BLE001 - any failure fails this task, and only it
            task["exception"] = exc
            self._finish(task, "FAILED")
        else:
            self._finish(task, "DONE")

    async def _post(self, uid: str, service: _Service, path: str, payload: dict[str, Any]) -> Any:
        assert self._client is not None
        response = await self._client.post(service.base_url + path, json=payload)
        if response.status_code != 200:
            raise InferenceError(uid, service.base_url, response.status_code, _server_message(response))
        return response.json()

    async def _explain_lost(self, uid: str, service: _Service, exc: httpx.TransportError) -> Exception:
        detail = f"{type(exc).__name__}: {exc}"
        server = service.server
        if server is not None and server.exited is not None and not server.stopping:
            # A dead server resets its connections a moment before its exit is reaped. Being
            # cancelled meanwhile (by the death watch or close) must not lose the failure.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([server.exited], timeout=_DEATH_GRACE)
        if service.death is not None or (server is not None and server.exited is not None
                                         and server.exited.done()):
            why = service.death or f"the vLLM server exited with status {server.exited.result()}"  # type: ignore[union-attr]
            return EngineDiedError(uid, service.base_url, None, f"{why} ({detail})")
        return InferenceError(uid, service.base_url, None, f"connection lost: {detail}")

    def _finish_cancelled(self, task: Task, service: _Service, *, cancelling: bool) -> None:
        # Only the program's cancel (or close) makes a task CANCELED; a request cut short
        # because its server died fails with the reason.
        uid = task["uid"]
        if service.death is not None and not cancelling:
            task["exception"] = EngineDiedError(uid, service.base_url, None, service.death)
            self._finish(task, "FAILED")
        else:
            self._finish(task, "CANCELED")

    def _finish(self, task: Task, state: str) -> None:
        # Requests that complete in the same loop iteration reach the session as one batch.
        self._finished.append((task, state))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._event_loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._finished:
            batch, self._finished = self._finished, []
            self.report(batch)

    async def cancel_task(self, task: Task) -> bool:
        """Abort the task's request (closing its connection makes vLLM drop the request).

        Returns ``False`` when the task has already finished.
        """
        entry = self.in_flight.find(task)
        if entry is None or entry.handle.done():
            return False
        entry.cancelling = True
        entry.handle.cancel()
        return True


def _fill(task: Task, service: _Service, path: str, answers: list[Any]) -> None:
    """Put the answer(s) on the task; a list of prompts gets lists of texts and reasons."""
    try:
        if path == "/completions":
            picked = sorted(answers[0]["choices"], key=lambda choice: choice["index"])
            texts = [choice["text"] for choice in picked]
        else:
            picked = [body["choices"][0] for body in answers]
            texts = [choice["message"]["content"] for choice in picked]
        reasons = [choice["finish_reason"] for choice in picked]
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for body in answers:
            for key in usage:
                usage[key] += body["usage"][key]
    except (KeyError, IndexError, TypeError) as exc:
        raise InferenceError(
            task["uid"], service.base_url, 200,
            f"answer to {path} is not an OpenAI-style response ({type(exc).__name__}: {exc})",
        ) from exc
    single = isinstance(task["prompt"], str)
    task["response"] = texts[0] if single else texts
    task["finish_reason"] = reasons[0] if single else reasons
    task["usage"] = usage
    task["return_value"] = task["response"]


def _server_message(response: httpx.Response) -> str:
    # vLLM (and OpenAI) answer errors as {"error": {"message": ...}}; older vLLM as {"message": ...}.
    with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
        body = response.json()
        error = body.get("error", body)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
    return response.text.strip()[:2000] or response.reason_phrase


def _check_api(api: Any, where: str) -> None:
    if api not in ("chat", "completions"):
        raise ValueError(f"{where} must be 'chat' or 'completions', got {api!r}")


def _check_timeout(value: Any, where: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{where} must be a positive number of seconds, got {value!r}")

