"""The HTTP front of the simulated replica: the SGLang-compatible API over an :class:`Engine`.

Endpoints (what the benchmark client, our load balancers and the real ``sglang-router`` call):

* ``POST /v1/chat/completions`` and ``POST /v1/completions``: OpenAI-style, streaming SSE when
  ``stream`` is true. The final stream chunk carries ``finish_reason`` and, with
  ``stream_options.include_usage``, ``usage`` (SGLang 0.4.5 style: in the same chunk), plus an
  ``lbbench`` object with the replica's own timestamps.
* ``GET /v1/models``, ``/health``, ``/health_generate``, ``/get_server_info`` (``/server_info``),
  ``/get_model_info`` (``/model_info``), ``/get_load``, ``/metrics``; ``POST /flush_cache``.
* ``POST /lbbench/reset`` (ours): when idle, flush the cache and zero every counter and gauge, so
  the replica looks like a fresh process; HTTP 409 while requests are in flight.

``/metrics``: the ``sglang:*`` gauges (running, queue, used tokens, token usage, cache hit rate,
throughput) are SGLang's ``SchedulerStats`` as last logged (``engine_metrics="sglang"``, see
:mod:`.engine`) or live values (``"live"``). ``/get_load`` is always live (it reads the
scheduler's state when asked, as SGLang's does).

Every response carries ``x-lbbench-replica: <name>`` so clients can tell which replica served
them (the router forwards worker response headers, not request headers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from pytest_lbbench.aioserve import first_on_connection
from pytest_lbbench.control import control_middleware
from pytest_lbbench.protocol import FAULT_PATH, REPLICA_HEADER, RESET_PATH

from . import tokenizer
from .engine import ENGINE_METRICS, Engine, EngineBusy, EngineClosed, RequestAborted, RequestRejected, SimRequest
from .profile import DEFAULT_PROFILE, PROFILES, EngineProfile

log = logging.getLogger(__name__)

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
#: SGLang's default ``max_new_tokens`` when a request gives no ``max_tokens``.
DEFAULT_MAX_TOKENS = 128


@dataclass(frozen=True)
class ReplicaConfig:
    """Who the replica is and which engine it simulates."""

    name: str = "replica-0"
    model: str = DEFAULT_MODEL
    profile: EngineProfile = field(default_factory=lambda: PROFILES[DEFAULT_PROFILE])
    seed: int = 0
    #: Recount the KV bookkeeping after every engine iteration (slow; for tests).
    check_invariants: bool = False
    #: ``"sglang"``: ``sglang:*`` gauges set only at SGLang's logging points (default);
    #: ``"live"``: the current values at every scrape.
    engine_metrics: str = "sglang"

    def __post_init__(self) -> None:
        if self.engine_metrics not in ENGINE_METRICS:
            raise ValueError(
                f"engine_metrics must be one of {', '.join(ENGINE_METRICS)}, got {self.engine_metrics!r}"
            )


class ApiError(Exception):
    """An error answered as OpenAI-style JSON ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, err_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type


def error_response(status: int, message: str, err_type: str = "invalid_request_error") -> web.Response:
    """The JSON error body every failing endpoint returns."""
    return web.json_response({"error": {"message": message, "type": err_type, "code": status}}, status=status)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors_as_json(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.err_type)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err_type = "not_found_error" if exc.status == 404 else "invalid_request_error"
        return error_response(exc.status, f"{exc.reason}: {request.method} {request.path}", err_type)


async def _read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def _sampling_seed(body: Mapping[str, Any]) -> int | None:
    """The request's sampling ``seed`` (OpenAI field; SGLang's ``sampling_seed``), if any."""
    for key in ("seed", "sampling_seed"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _max_tokens(body: Mapping[str, Any]) -> int:
    # max_completion_tokens is the newer OpenAI name; either may come.
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(400, f"{key} must be an integer, got {value!r}")
        if value < 1:
            raise ApiError(400, f"{key} must be at least 1, got {value}")
        return value
    return DEFAULT_MAX_TOKENS


class _Kind:
    """What differs between ``/v1/chat/completions`` and ``/v1/completions``."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.id_prefix = "chatcmpl-" if chat else "cmpl-"
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"
        self.object = "chat.completion" if chat else "text_completion"


_CHAT = _Kind(chat=True)
_COMPLETION = _Kind(chat=False)


class SimReplica:
    """One simulated replica: an :class:`Engine` plus its aiohttp app.

    ``async with SimReplica(config) as replica:`` starts it on 127.0.0.1 and a free port
    (``replica.url``); :meth:`start` / :meth:`close` do the same explicitly.
    """

    def __init__(self, config: ReplicaConfig | None = None, *, control_token: str | None = None) -> None:
        """``control_token``: the run's secret, needed by ``/lbbench/*`` (None: they answer 401)."""
        self.config = config or ReplicaConfig()
        self.control_token = control_token
        self.engine = Engine(
            self.config.profile,
            seed=self.config.seed,
            check_invariants=self.config.check_invariants,
            engine_metrics=self.config.engine_metrics,
        )
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self._closed = False

    # ---- lifecycle ----

    @property
    def port(self) -> int:
        """The listening port (after :meth:`start`)."""
        if self._sock is None:
            raise RuntimeError("replica not started")
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        """``http://host:port`` of the running replica."""
        if self._sock is None:
            raise RuntimeError("replica not started")
        host = self._sock.getsockname()[0]
        return f"http://{host}:{self.port}"

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
    ) -> None:
        """Start the engine and serve on ``sock`` (or a socket bound to ``host:port``)."""
        if self._runner is not None:
            raise RuntimeError("replica already started")
        if sock is None:
            from ..procutil import bind_socket

            sock = bind_socket(host, port)
        self._sock = sock
        self.engine.start()
        # handler_cancellation: a client disconnect cancels its handler, whose `finally` aborts
        # the request in the engine and frees its KV even while it still waits in the queue.
        # No access log: one line per request costs more CPU than the request itself.
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
        await runner.setup()
        self._runner = runner
        await web.SockSite(runner, sock).start()

    async def close(self) -> None:
        """Stop serving and stop the engine (open streams end). Idempotent."""
        if self._closed:
            return
        self._closed = True
        # Engine first: it aborts every request, so streaming handlers return promptly.
        await self.engine.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimReplica:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- app ----

    def _build_app(self) -> web.Application:
        name = self.config.name
        max_body = 64 * 1024 * 1024
        app = web.Application(
            middlewares=[
                control_middleware(self.control_token, (RESET_PATH, FAULT_PATH), max_body_bytes=max_body,
                                   server=f"replica {name}"),
                _errors_as_json,
            ],
            client_max_size=max_body,
        )

        async def _tag(request: web.Request, response: web.StreamResponse) -> None:
            response.headers[REPLICA_HEADER] = name

        app.on_response_prepare.append(_tag)
        routes = [
            web.get("/v1/models", self._models),
            web.post("/v1/chat/completions", self._chat_completions),
            web.post("/v1/completions", self._completions),
            web.get("/health", self._health),
            web.get("/health_generate", self._health),
            web.get("/get_server_info", self._server_info),
            web.get("/server_info", self._server_info),
            web.get("/get_model_info", self._model_info),
            web.get("/model_info", self._model_info),
            web.get("/get_load", self._get_load),
            web.get("/metrics", self._metrics),
            web.post("/flush_cache", self._flush_cache),
            web.post(RESET_PATH, self._reset),
            web.post(FAULT_PATH, self._fault),
        ]
        app.add_routes(routes)
        return app

    # ---- info endpoints ----

    async def _models(self, request: web.Request) -> web.Response:
        model = self.config.model
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "created": 0, "owned_by": "sglang", "root": model}],
            }
        )

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _server_info(self, request: web.Request) -> web.Response:
        profile = self.config.profile
        stats = self.engine.stats()
        return web.json_response(
            {
                "model_path": self.config.model,
                "tokenizer_path": self.config.model,
                "served_model_name": self.config.model,
                "dp_size": 1,
                "tp_size": 1,
                "max_total_num_tokens": profile.kv_capacity_tokens,
                "chunked_prefill_size": profile.chunked_prefill_tokens,
                "max_running_requests": profile.max_running_requests,
                "context_length": profile.max_context_tokens,
                "max_req_input_len": profile.max_req_input_len,
                "cuda_graph_max_bs": profile.cuda_graph_max_bs,
                "lbbench": {
                    "engine_metrics": self.config.engine_metrics,
                    "engine_iterations_total": stats.iterations_total,
                    "engine_late_iterations_total": stats.late_iterations_total,
                    "engine_lag_seconds_total": stats.lag_seconds_total,
                    "engine_lag_max_seconds": stats.lag_max_seconds,
                    "engine_clock_resyncs_total": stats.clock_resyncs_total,
                    "new_token_ratio": stats.new_token_ratio,
                    "batch_is_full": stats.batch_is_full,
                },
                "lbbench_replica": self.config.name,
                "lbbench_seed": self.config.seed,
                "lbbench_profile": profile.to_dict(),
            }
        )

    async def _model_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"model_path": self.config.model, "tokenizer_path": self.config.model, "is_generation": True}
        )

    async def _get_load(self, request: web.Request) -> web.Response:
        stats = self.engine.stats()
        return web.json_response(
            [
                {
                    "dp_rank": 0,
                    "num_reqs": stats.num_running + stats.num_waiting,
                    "num_waiting_reqs": stats.num_waiting,
                    "num_tokens": stats.used_tokens,
                }
            ]
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        text = render_metrics(self.engine, self.config.model)
        return web.Response(
            text=text,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def _flush_cache(self, request: web.Request) -> web.Response:
        evicted = self.engine.flush_cache()
        return web.json_response({"evicted_tokens": evicted})

    async def _reset(self, request: web.Request) -> web.Response:
        """``POST /lbbench/reset``: back to a fresh replica's state, only when idle."""
        try:
            cleared = self.engine.reset()
        except EngineBusy as exc:
            raise ApiError(409, str(exc), "conflict") from exc
        return web.json_response({"reset": True, "replica": self.config.name, "cleared": cleared})

    async def _fault(self, request: web.Request) -> web.Response:
        """``POST /lbbench/fault`` ``{"slowdown": F}``: every engine iteration takes F times its
        profile time from now on (1 = healthy again). The fault drill ``slow:`` uses it."""
        body = await _read_json(request)
        slowdown = body.get("slowdown")
        if isinstance(slowdown, bool) or not isinstance(slowdown, (int, float)) or not 1 <= slowdown <= 1000:
            raise ApiError(400, f"'slowdown' must be a number within [1, 1000], got {slowdown!r}")
        previous, self.engine.slowdown = self.engine.slowdown, float(slowdown)
        return web.json_response({"replica": self.config.name, "slowdown": float(slowdown), "previous": previous})

    # ---- generation ----

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        received = time.time()  # before the body is read, parsed and tokenized (intake)
        body = await _read_json(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects")
        try:
            tokens = tokenizer.apply_chat_template(messages)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        return await self._generate(request, body, tokens, _CHAT, received)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        received = time.time()
        body = await _read_json(request)
        prompt = body.get("prompt")
        # A one-element list is how some clients send a single prompt.
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (batched or token-id prompts are not supported)")
        return await self._generate(request, body, tokenizer.completion_prompt(prompt), _COMPLETION, received)

    async def _generate(
        self, request: web.Request, body: Mapping[str, Any], tokens: list[str], kind: _Kind,
        received: float,
    ) -> web.StreamResponse:
        max_tokens = _max_tokens(body)
        stream = bool(body.get("stream"))
        stream_options = body.get("stream_options")
        include_usage = (
            stream and isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
        )
        requested_model = body.get("model")
        model = requested_model if isinstance(requested_model, str) else self.config.model
        try:
            req = self.engine.submit(
                tokens, max_tokens, ignore_eos=bool(body.get("ignore_eos")),
                sampling_seed=_sampling_seed(body),
            )
        except RequestRejected as exc:
            raise ApiError(400, str(exc)) from exc
        except EngineClosed as exc:
            raise ApiError(503, str(exc), "service_unavailable") from exc
        meta = _ResponseMeta(
            rid=kind.id_prefix + uuid.uuid4().hex, created=int(time.time()), model=model, kind=kind,
            received=received, new_connection=first_on_connection(request),
        )
        try:
            if stream:
                return await self._stream(request, req, meta, include_usage)
            try:
                await req.wait_done()
            except RequestAborted as exc:
                raise ApiError(503, f"request aborted: {exc}", "service_unavailable") from exc
            return web.json_response(meta.full_response(req, self.config.name))
        finally:
            # Client gone (handler cancelled, write failed) or an error: free its KV now.
            if not req.done:
                self.engine.abort(req)

    async def _stream(
        self, request: web.Request, req: SimRequest, meta: _ResponseMeta, include_usage: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        first = True
        try:
            async for pieces in req.stream():
                parts = []
                for piece in pieces:
                    parts.append(meta.token_chunk(piece, first))
                    first = False
                await response.write("".join(parts).encode())
            await response.write(
                meta.final_chunk(req, self.config.name, include_usage).encode() + b"data: [DONE]\n\n"
            )
        except RequestAborted:
            # The engine shut down mid-stream: end the stream without [DONE] so clients see a failure.
            return response
        except (ConnectionResetError, ConnectionError):
            return response
        await response.write_eof()
        return response


@dataclass(frozen=True)
class _ResponseMeta:
    rid: str
    created: int
    model: str
    kind: _Kind
    #: When the HTTP request reached the replica (``time.time()``), before its body was read.
    received: float
    #: The request came on a connection opened for it (see :func:`first_on_connection`).
    new_connection: bool | None

    def _chunk_head(self) -> str:
        return (
            f'data: {{"id":"{self.rid}","object":"{self.kind.chunk_object}","created":{self.created},'
            f'"model":{json.dumps(self.model)},"choices":[{{"index":0,'
        )

    def token_chunk(self, piece: str, first: bool) -> str:
        """One SSE event carrying one token (hand-assembled: this runs once per token)."""
        text = json.dumps(piece)
        if self.kind.chat:
            delta = (
                f'"delta":{{"role":"assistant","content":{text}}}'
                if first
                else f'"delta":{{"content":{text}}}'
            )
            return f'{self._chunk_head()}{delta},"logprobs":null,"finish_reason":null}}]}}\n\n'
        return f'{self._chunk_head()}"text":{text},"logprobs":null,"finish_reason":null}}]}}\n\n'

    def final_chunk(self, req: SimRequest, replica: str, include_usage: bool) -> str:
        """The last event: empty delta, ``finish_reason``, usage (if asked) and ``lbbench``."""
        choice: dict[str, Any] = {"index": 0}
        if self.kind.chat:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        choice["logprobs"] = None
        choice["finish_reason"] = req.finish_reason
        chunk: dict[str, Any] = {
            "id": self.rid,
            "object": self.kind.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if include_usage:
            chunk["usage"] = usage(req)
        chunk["lbbench"] = lbbench_info(req, replica, self)
        return "data: " + json.dumps(chunk, separators=(",", ":")) + "\n\n"

    def full_response(self, req: SimRequest, replica: str) -> dict[str, Any]:
        """The non-streaming response body."""
        text = tokenizer.detokenize(req.output_tokens)
        choice: dict[str, Any] = {"index": 0}
        if self.kind.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice["logprobs"] = None
        choice["finish_reason"] = req.finish_reason
        return {
            "id": self.rid,
            "object": self.kind.object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(req),
            "lbbench": lbbench_info(req, replica, self),
        }


def usage(req: SimRequest) -> dict[str, Any]:
    """OpenAI ``usage`` with SGLang's ``prompt_tokens_details.cached_tokens``."""
    prompt = len(req.prompt)
    completion = req.generated
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": req.cached_tokens or 0},
    }


def lbbench_info(req: SimRequest, replica: str, meta: _ResponseMeta) -> dict[str, Any]:
    """The ``lbbench`` extension object: which replica, its own wall-clock timestamps
    (``received``: the HTTP request came in; ``arrival``: parsed and tokenized, in the engine),
    and whether the request opened its connection."""
    info: dict[str, Any] = {"replica": replica, "received": meta.received}
    info.update(req.timings())
    info["retractions"] = req.retractions
    info["new_connection"] = meta.new_connection
    return info


#: The gauges SGLang sets only at its logging points: read from :meth:`Engine.gauges`.
_GAUGES: tuple[tuple[str, str, str, Callable[[Any], float]], ...] = (
    ("sglang:num_running_reqs", "gauge", "The number of running requests.", lambda g: g.num_running_reqs),
    (
        "sglang:num_queue_reqs",
        "gauge",
        "The number of requests in the waiting queue.",
        lambda g: g.num_queue_reqs,
    ),
    (
        "sglang:num_used_tokens",
        "gauge",
        "The number of KV tokens used by running requests.",
        lambda g: g.num_used_tokens,
    ),
    (
        "sglang:token_usage",
        "gauge",
        "The fraction of the KV pool used by running requests.",
        lambda g: g.token_usage,
    ),
    (
        "sglang:cache_hit_rate",
        "gauge",
        "The prefix cache hit rate (of the last prefill batch; cumulative with live metrics).",
        lambda g: g.cache_hit_rate,
    ),
    (
        "sglang:gen_throughput",
        "gauge",
        "The generation throughput (tokens/s, wall clock).",
        lambda g: g.gen_throughput,
    ),
)

_METRICS: tuple[tuple[str, str, str, Callable[[Any], float]], ...] = (
    (
        "sglang:max_total_num_tokens",
        "gauge",
        "The size of the KV pool in tokens.",
        lambda s: s.kv_capacity_tokens,
    ),
    (
        "sglang:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        lambda s: s.prompt_tokens_total,
    ),
    (
        "sglang:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        lambda s: s.generation_tokens_total,
    ),
    (
        "sglang:cached_tokens_total",
        "counter",
        "Number of cached prompt tokens.",
        lambda s: s.cached_tokens_total,
    ),
    ("sglang:num_requests_total", "counter", "Number of requests processed.", lambda s: s.num_requests_total),
    (
        "lbbench:cache_tokens",
        "gauge",
        "KV tokens held by the prefix cache (locked + evictable).",
        lambda s: s.cache_tokens,
    ),
    (
        "lbbench:evictable_tokens",
        "gauge",
        "Prefix-cache tokens no running request holds.",
        lambda s: s.evictable_tokens,
    ),
    (
        "lbbench:peak_occupied_tokens",
        "gauge",
        "Highest KV occupancy so far (cache + running), tokens.",
        lambda s: s.peak_occupied_tokens,
    ),
    (
        "lbbench:num_aborted_total",
        "counter",
        "Requests aborted (client disconnects).",
        lambda s: s.num_aborted_total,
    ),
    (
        "lbbench:num_retracted_total",
        "counter",
        "Retractions for lack of KV memory.",
        lambda s: s.num_retracted_total,
    ),
    (
        "lbbench:evicted_tokens_total",
        "counter",
        "Tokens evicted from the prefix cache.",
        lambda s: s.evicted_tokens_total,
    ),
    (
        "lbbench:prefill_iterations_total",
        "counter",
        "Prefill iterations run.",
        lambda s: s.prefill_iterations_total,
    ),
    (
        "lbbench:decode_iterations_total",
        "counter",
        "Decode iterations run.",
        lambda s: s.decode_iterations_total,
    ),
    (
        "lbbench:prefill_tokens_computed_total",
        "counter",
        "Prompt tokens actually computed (not cached).",
        lambda s: s.prefill_tokens_computed_total,
    ),
    (
        "lbbench:clock_resyncs_total",
        "counter",
        "Times the engine clock fell behind the event loop and was reset.",
        lambda s: s.clock_resyncs_total,
    ),
    (
        "lbbench:engine_clock_resyncs_total",
        "counter",
        "Times the engine fell more than 0.25 s behind model time and restarted its clock.",
        lambda s: s.clock_resyncs_total,
    ),
    (
        "lbbench:engine_iterations_total",
        "counter",
        "Engine iterations (prefill batches and decode steps) run.",
        lambda s: s.iterations_total,
    ),
    (
        "lbbench:engine_late_iterations_total",
        "counter",
        "Engine iterations that ended more than 5 ms after their model-time deadline.",
        lambda s: s.late_iterations_total,
    ),
    (
        "lbbench:engine_lag_seconds_total",
        "counter",
        "Sum over iterations of how late each deadline was met (wall seconds).",
        lambda s: s.lag_seconds_total,
    ),
    (
        "lbbench:engine_lag_max_seconds",
        "gauge",
        "The latest an iteration deadline was met (wall seconds).",
        lambda s: s.lag_max_seconds,
    ),
    (
        "lbbench:live_num_queue_reqs",
        "gauge",
        "Requests waiting in the engine now (whatever sglang:num_queue_reqs last showed).",
        lambda s: s.num_waiting,
    ),
    (
        "lbbench:live_num_running_reqs",
        "gauge",
        "Requests running in the engine now.",
        lambda s: s.num_running,
    ),
)


def render_metrics(engine: Engine, model: str) -> str:
    """Prometheus text exposition of the engine's stats, SGLang metric names and labels."""
    stats = engine.stats()
    gauges = engine.gauges()
    escaped = model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    label = '{model_name="' + escaped + '"}'
    lines: list[str] = []
    for name, kind, help_text, get, source in [
        *((*m, gauges) for m in _GAUGES),
        *((*m, stats) for m in _METRICS),
    ]:
        value = float(get(source))
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{label} {value!r}")
    return "\n".join(lines) + "\n"


class _DropHttp2Probes(logging.Filter):
    """Drop aiohttp's error for an HTTP/2 connection preface (``PRI * HTTP/2.0``).

    sglang-router first probes every worker over gRPC (HTTP/2) before falling back to HTTP/1.1;
    aiohttp then logs a full traceback per probe. It is expected noise, not a fault.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and type(exc).__name__ == "BadHttpMessage" and "PRI" in str(exc))


def quiet_router_probes() -> None:
    """Install :class:`_DropHttp2Probes` on aiohttp's server logger (idempotent)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _DropHttp2Probes) for f in server_log.filters):
        server_log.addFilter(_DropHttp2Probes())


async def run_server(
    config: ReplicaConfig,
    sock: socket.socket,
    *,
    stop: asyncio.Event,
    on_ready: Callable[[SimReplica], None] | None = None,
    control_token: str | None = None,
) -> None:
    """Serve ``config`` on ``sock`` until ``stop`` is set; call ``on_ready`` once serving."""
    replica = SimReplica(config, control_token=control_token)
    await replica.start(sock=sock)
    try:
        if on_ready is not None:
            on_ready(replica)
        await stop.wait()
    finally:
        await replica.close()
