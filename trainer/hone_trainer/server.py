"""The built-in OpenAI-compatible server: ``python -m hone_trainer serve``.

Endpoints:

* ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream``
  with server-sent events, ``stream_options.include_usage``), ``GET /v1/models``;
* ``GET /health`` (the process is alive), ``GET /ready`` (the model and every
  adapter are loaded), ``GET /metrics`` (Prometheus).

Every response carries ``usage`` counted with the model's tokenizer, and the
``hone_inference_tokens_total`` counters move by exactly those numbers: both
come from the same place, the moment a request ends. Errors use OpenAI's
error object and status codes (400 names the field, 401, 404 for an unknown
model, 429 when the queue is full, 503 while loading).

The model loads in the background after the port opens, so liveness probes
pass at once and readiness turns true when loading is done. A model that
cannot be loaded ends the process with exit code 5 and the reason on stderr
(and in the termination log in a pod).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hone_trainer.contract import ServerConfig

log = logging.getLogger("hone.server")

UNKNOWN_MODEL_LABEL = "(unknown)"


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    msg = first["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{param}: {msg}" if param else msg, param=param)


# --------------------------------------------------------------------------
# Requests (OpenAI's shapes; fields Hone cannot honour are refused, not ignored)
# --------------------------------------------------------------------------


class _Req(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: bool | int | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @model_validator(mode="after")
    def _unsupported(self) -> "_Req":
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise ValueError(f"{name} is not supported by this server; leave it at 0")
        if self.logprobs:
            raise ValueError("logprobs are not supported by this server")
        for name in ("tools", "functions", "tool_choice", "logit_bias", "best_of", "suffix", "echo"):
            if (self.model_extra or {}).get(name) not in (None, False, [], {}):
                raise ValueError(f"{name} is not supported by this server")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and (self.stream_options or {}).get("include_usage"))


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self, where: str) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for i, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}.content[{i}]: only text parts are supported",
                               param=f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Req):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Req):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one prompt")
        return v

    @property
    def limit(self) -> int | None:
        return self.max_tokens


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


class Metrics:
    def __init__(self, config: ServerConfig, state: "State"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series only double what a scrape sends

        self.registry = CollectorRegistry()
        self.prices = config.prices
        r = self.registry
        self.tokens = Counter("hone_inference_tokens_total", "Prompt and completion tokens served, as in `usage`.",
                              ["model", "type"], registry=r)
        self.cost = Counter("hone_cost_usd_total", "Cost of the tokens served at the price table, in US dollars.",
                            ["model", "kind"], registry=r)
        self.requests = Counter("hone_inference_requests_total", "Requests answered, by HTTP status code.",
                                ["model", "endpoint", "code"], registry=r)
        buckets = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
        self.duration = Histogram("hone_inference_request_duration_seconds", "Time from request to last byte.",
                                  ["model", "endpoint"], buckets=buckets, registry=r)
        self.ttft = Histogram("hone_inference_time_to_first_token_seconds", "Time from request to first token.",
                              ["model", "endpoint"], buckets=buckets, registry=r)
        Gauge("hone_inference_queue_depth", "Sequences waiting for a place in the batch.",
              registry=r).set_function(lambda: state.engine.waiting if state.engine else 0)
        Gauge("hone_inference_running_sequences", "Sequences being decoded.",
              registry=r).set_function(lambda: state.engine.running if state.engine else 0)
        Gauge("hone_inference_requests_in_flight", "Requests accepted and not yet answered.",
              registry=r).set_function(lambda: state.in_flight)
        Gauge("hone_inference_ready", "1 when the model and every adapter are loaded.",
              registry=r).set_function(lambda: 1 if state.ready else 0)
        self.info = Gauge("hone_inference_model_info", "Models this server serves (value 1).",
                          ["model", "base_model", "adapter"], registry=r)

    def meter(self, model: str, prompt: int, completion: int) -> None:
        self.tokens.labels(model, "prompt").inc(prompt)
        self.tokens.labels(model, "completion").inc(completion)
        # Exact, not rounded per request: rounding 27 tokens to a millionth of a dollar loses 1%.
        self.cost.labels(model, "prompt").inc(prompt * self.prices.prompt / 1_000_000)
        self.cost.labels(model, "completion").inc(completion * self.prices.completion / 1_000_000)


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------


@dataclass
class State:
    config: ServerConfig
    served: Any = None  # serving.Served once loaded
    engine: Any = None  # engine.Engine once loaded
    ready: bool = False
    load_error: str | None = None
    in_flight: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
    keys: "ApiKeys | None" = None
    metrics: Metrics | None = None


class ApiKeys:
    """Accepted keys from a mounted file (one per line, # comments); re-read when the file changes."""

    def __init__(self, path: str):
        self.path = Path(path)
        self._mtime: float | None = None
        self._keys: list[bytes] = []
        self._load()

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            if self._mtime is None:
                raise ValueError(f"cannot read the API keys file {self.path}: {exc}") from exc
            return  # a Secret update swaps the file; keep the old keys for that instant
        if mtime == self._mtime:
            return
        lines = [ln.strip() for ln in self.path.read_text().splitlines()]
        keys = [ln.encode() for ln in lines if ln and not ln.startswith("#")]
        if not keys:
            raise ValueError(f"the API keys file {self.path} holds no keys")
        self._keys, self._mtime = keys, mtime

    def check(self, header: str | None) -> None:
        try:
            self._load()
        except ValueError:
            log.warning("API keys file %s became unreadable or empty; keeping the previous keys", self.path)
        scheme, _, token = (header or "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() != "bearer" or not given or not any(hmac.compare_digest(given, k) for k in self._keys):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                           type="invalid_request_error", code="invalid_api_key")


# --------------------------------------------------------------------------
# Generation for one request
# --------------------------------------------------------------------------


@dataclass
class Choice:
    index: int
    seq: Any  # engine.SequenceState; its ``generated`` tokens are the choice's completion tokens
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None


class Generation:
    """The n choices (times prompts) of one request, fed by the engine thread."""

    def __init__(self, state: State, adapter: str, prompts: list[list[int]], req: _Req, max_tokens: int):
        from hone_trainer.engine import SamplingParams, SequenceState

        self.loop = asyncio.get_running_loop()
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.choices: list[Choice] = []
        self.events: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        index = 0
        for prompt in prompts:
            for k in range(req.n):
                seed = None if req.seed is None else req.seed + k
                params = SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                        stop=tuple(req.stop or ()), seed=seed)
                i = index
                seq = SequenceState(prompt_ids=prompt, adapter=adapter, params=params,
                                    emit=lambda ev, i=i: self.loop.call_soon_threadsafe(self.events.put_nowait, (i, ev)))
                self.choices.append(Choice(i, seq))
                index += 1
        self.state = state
        self.metered = False

    def start(self) -> None:
        for c in self.choices:
            self.state.engine.submit(c.seq)

    def cancel(self) -> None:
        for c in self.choices:
            c.seq.cancel()

    async def events_until_done(self) -> AsyncIterator[tuple[Choice, Any]]:
        pending = len(self.choices)
        while pending:
            i, ev = await self.events.get()
            choice = self.choices[i]
            if ev.finished:
                choice.finish_reason = ev.finish_reason
                choice.error = ev.error
                pending -= 1
            else:
                choice.text += ev.text
            yield choice, ev

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.seq.generated) for c in self.choices)

    @property
    def metered_prompt_tokens(self) -> int:
        """Prompt tokens are billed once the model has read them (OpenAI counts a prompt once per request)."""
        return self.prompt_tokens if any(c.seq.prefilled for c in self.choices) else 0

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


# --------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------


def create_app(config: ServerConfig, *, load: bool = True, on_load_error: Any = None) -> Starlette:
    """The ASGI app; ``on_load_error()`` is called when the models cannot be loaded."""
    state = State(config)
    state.metrics = Metrics(config, state) if config.metrics_enabled else None
    if config.api_keys_file:
        state.keys = ApiKeys(config.api_keys_file)

    def load_models() -> None:
        from hone_trainer import serving
        from hone_trainer.engine import Engine

        try:
            served = serving.load(config)
        except Exception as exc:  # noqa: BLE001 - reported, then the process ends
            if isinstance(exc, serving.ServingError):
                state.load_error = str(exc)
                log.error("cannot serve: %s", exc)
            else:
                state.load_error = f"loading failed: {exc}"
                log.exception("loading failed")
            if on_load_error is not None:
                on_load_error()
            return
        adapters = [n for n in served.names.values() if n != "__base__"]
        engine = Engine(served.model, served.tokenizer, max_batch_size=config.max_batch_size, adapters=adapters,
                        eos_token_ids=served.eos_token_ids)
        engine.start()
        state.served, state.engine = served, engine
        if state.metrics:
            for name, internal in served.names.items():
                state.metrics.info.labels(name, served.base_name, "false" if internal == "__base__" else "true").set(1)
        state.ready = True
        log.info("ready: serving %s", ", ".join(served.names))

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = None
        if load:
            loader = threading.Thread(target=load_models, name="hone-loader", daemon=True)
            loader.start()
            app.state.loader = loader
        yield
        if state.engine is not None:
            state.engine.stop()

    def v1(endpoint: str, handler: Any) -> Any:
        return functools.partial(_guard, state, endpoint=endpoint, handler=handler)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        return _ready(state)

    async def metrics(request: Request) -> Response:
        return _metrics(state)

    app = Starlette(routes=[
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics),
        Route("/v1/models", v1("models", _models)),
        Route("/v1/models/{model:path}", v1("models", _model)),
        Route("/v1/chat/completions", v1("chat", _chat), methods=["POST"]),
        Route("/v1/completions", v1("completions", _completions), methods=["POST"]),
    ], lifespan=lifespan)  # type: ignore[arg-type]
    app.state.hone = state
    return app


def _ready(state: State) -> JSONResponse:
    if state.ready:
        return JSONResponse({"status": "ready", "models": list(state.served.names)})
    if state.load_error:
        return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


def _metrics(state: State) -> Response:
    if state.metrics is None:
        return Response("metrics are disabled\n", status_code=404)
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _guard(state: State, request: Request, endpoint: str, handler: Any) -> Response:
    """Auth, readiness, capacity and error mapping around every /v1 handler."""
    ctx = _Ctx(state, request, endpoint, time.monotonic())
    counted = False
    try:
        if state.keys is not None:
            state.keys.check(request.headers.get("authorization"))
        if not state.ready:
            raise ApiError(503, state.load_error or "the model is still loading; retry shortly",
                           type="server_error", code="model_not_ready", headers={"Retry-After": "5"})
        if request.method == "POST":
            if state.in_flight >= state.config.max_concurrent_requests:
                raise ApiError(429, f"the server is at capacity ({state.config.max_concurrent_requests} requests "
                               "queued or running); retry later", type="requests", code="rate_limit_exceeded",
                               headers={"Retry-After": "1"})
            state.in_flight += 1
            counted = True
        response = await handler(ctx)
        if isinstance(response, StreamingResponse):
            ctx.release = lambda: _release(state, True)
            counted = False  # released when the stream ends
        _observe(ctx, response.status_code)
        return response
    except ApiError as exc:
        _observe(ctx, exc.status)
        return exc.response()
    except Exception as exc:  # noqa: BLE001 - a bug must not take the server down
        log.exception("request failed")
        _observe(ctx, 500)
        return ApiError(500, f"internal error: {exc}", type="server_error").response()
    finally:
        if counted:
            _release(state, True)


def _release(state: State, counted: bool) -> None:
    if counted:
        state.in_flight -= 1


def _observe(ctx: "_Ctx", code: int) -> None:
    metrics = ctx.state.metrics
    if metrics is None or ctx.endpoint == "models":
        return
    metrics.requests.labels(ctx.model_label, ctx.endpoint, str(code)).inc()
    if not ctx.streaming:  # a stream's duration is observed when its last byte is sent
        metrics.duration.labels(ctx.model_label, ctx.endpoint).observe(time.monotonic() - ctx.started)


class _Ctx:
    def __init__(self, state: State, request: Request, endpoint: str, started: float):
        self.state, self.request, self.endpoint, self.started = state, request, endpoint, started
        self.model_label = UNKNOWN_MODEL_LABEL
        self.streaming = False
        self.release: Any = None

    async def body(self, model_cls: type[_Req]) -> Any:
        raw = await self.request.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        try:
            return model_cls.model_validate(data)
        except ValidationError as exc:
            raise _validation_error(exc) from exc

    def adapter(self, model: str) -> str:
        names = self.state.served.names
        if model not in names:
            raise ApiError(404, f"The model `{model}` does not exist. Served models: {', '.join(names)}",
                           param="model", code="model_not_found")
        self.model_label = model
        return names[model]


async def _models(ctx: _Ctx) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(ctx.state, n) for n in ctx.state.served.names]})


async def _model(ctx: _Ctx) -> Response:
    name = ctx.request.path_params["model"]
    ctx.adapter(name)
    return JSONResponse(_model_card(ctx.state, name))


def _model_card(state: State, name: str) -> dict[str, Any]:
    served = state.served
    art = served.artifacts.get(name)
    created = state.created
    if art is not None and art.manifest.get("createdAt"):
        from datetime import datetime

        created = int(datetime.fromisoformat(art.manifest["createdAt"]).timestamp())
    return {"id": name, "object": "model", "created": created, "owned_by": "hone",
            "root": served.base_name if art is not None else name,
            "parent": served.base_name if art is not None else None}


def _budget(ctx: _Ctx, prompt_len: int, req: _Req, param: str) -> int:
    engine = ctx.state.engine
    context = engine.context_length
    limit = req.limit  # type: ignore[attr-defined]
    if prompt_len >= context:
        raise ApiError(400, f"This model's maximum context length is {context} tokens; the {param} take "
                       f"{prompt_len}. Shorten the {param}.", param=param, code="context_length_exceeded")
    if limit is None:
        return min(ctx.state.config.default_max_tokens, context - prompt_len)
    if prompt_len + limit > context:
        raise ApiError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                       f"{prompt_len + limit} tokens ({prompt_len} in the {param}, {limit} in the completion). "
                       f"Shorten the {param} or lower max_tokens.", param=param, code="context_length_exceeded")
    return limit


async def _chat(ctx: _Ctx) -> Response:
    req: ChatRequest = await ctx.body(ChatRequest)
    adapter = ctx.adapter(req.model)
    tokenizer = ctx.state.served.tokenizer
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(f"messages[{i}]")}
                for i, m in enumerate(req.messages)]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - templates raise for e.g. roles out of order
        raise ApiError(400, f"messages: the model's chat template refused them: {exc}", param="messages") from exc
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    max_tokens = _budget(ctx, len(prompt), req, "messages")
    return await _run(ctx, req, adapter, [prompt], max_tokens, chat=True)


async def _completions(ctx: _Ctx) -> Response:
    req: CompletionRequest = await ctx.body(CompletionRequest)
    adapter = ctx.adapter(req.model)
    tokenizer = ctx.state.served.tokenizer
    texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    if any(not p for p in prompts):
        raise ApiError(400, "prompt: a prompt is empty", param="prompt")
    max_tokens = min(_budget(ctx, len(p), req, "prompt") for p in prompts)
    return await _run(ctx, req, adapter, prompts, max_tokens, chat=False)


async def _run(ctx: _Ctx, req: _Req, adapter: str, prompts: list[list[int]], max_tokens: int,
               chat: bool) -> Response:
    gen = Generation(ctx.state, adapter, prompts, req, max_tokens)
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    gen.start()
    if req.stream:
        ctx.streaming = True
        return StreamingResponse(_stream(ctx, gen, req, rid, created, chat), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    first = True
    try:
        async for _choice, ev in gen.events_until_done():
            if first and (ev.text or ev.finished):
                first = False
                _ttft(ctx)
    except asyncio.CancelledError:
        gen.cancel()
        raise
    finally:
        _meter(ctx, gen)
    errors = [c.error for c in gen.choices if c.finish_reason == "error"]
    if errors:
        raise ApiError(500, errors[0] or "generation failed", type="server_error")
    choices = []
    for c in gen.choices:
        if chat:
            choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text, "refusal": None},
                            "logprobs": None, "finish_reason": c.finish_reason})
        else:
            choices.append({"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason})
    return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                         "model": req.model, "choices": choices, "usage": gen.usage(),
                         "system_fingerprint": None})


def _ttft(ctx: _Ctx) -> None:
    if ctx.state.metrics is not None:
        ctx.state.metrics.ttft.labels(ctx.model_label, ctx.endpoint).observe(time.monotonic() - ctx.started)


def _meter(ctx: _Ctx, gen: Generation) -> None:
    """Count the request's tokens, once (a stream meters before its last event, or when abandoned)."""
    if ctx.state.metrics is not None and not gen.metered:
        gen.metered = True
        ctx.state.metrics.meter(ctx.model_label, gen.metered_prompt_tokens, gen.completion_tokens)


async def _stream(ctx: _Ctx, gen: Generation, req: _Req, rid: str, created: int, chat: bool) -> AsyncIterator[str]:
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": req.model,
                                "system_fingerprint": None, "choices": choices}
        if req.include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def choice(c: Choice, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            return {"index": c.index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": c.index, "text": text or "", "logprobs": None, "finish_reason": finish}

    completed = False
    try:
        if chat:
            yield chunk([choice(c, None, None, first=True) for c in gen.choices])
        first = True
        async for c, ev in gen.events_until_done():
            if first and (ev.text or ev.finished):
                first = False
                _ttft(ctx)
            if ev.finished and ev.finish_reason == "error":
                err = ApiError(500, ev.error or "generation failed", type="server_error").body()
                yield f"data: {json.dumps(err)}\n\n"
                continue
            if ev.text:
                yield chunk([choice(c, ev.text, None)])
            if ev.finished:
                yield chunk([choice(c, None, ev.finish_reason)])
        if req.include_usage:
            yield chunk([], gen.usage())
        _meter(ctx, gen)  # before the client can see the end of the stream
        yield "data: [DONE]\n\n"
        completed = True
    finally:
        if not completed:
            gen.cancel()  # the client went away: stop generating for it
        _meter(ctx, gen)
        if ctx.state.metrics is not None:
            ctx.state.metrics.duration.labels(ctx.model_label, ctx.endpoint).observe(time.monotonic() - ctx.started)
        if ctx.release:
            ctx.release()


# --------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------


def serve(config: ServerConfig, *, graceful_seconds: int = 30, termination_log: str | None = None) -> int:
    """Run until SIGTERM/SIGINT; in-flight requests finish first. Returns the exit code."""
    import uvicorn

    server: Any = None

    def stop() -> None:  # a model that cannot load ends the process instead of idling unready
        server.should_exit = True

    app = create_app(config, on_load_error=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_config=None,
                                           timeout_graceful_shutdown=graceful_seconds, access_log=False))
    server.run()
    error = app.state.hone.load_error
    if error:
        print(f"hone-server: error: {error}", file=sys.stderr)
        if termination_log and os.path.exists(os.path.dirname(termination_log) or "."):
            try:
                Path(termination_log).write_text(error[:4000])
            except OSError:
                pass
        from hone_trainer.contract import ExitCode

        return int(ExitCode.MODEL_ERROR)
    return 0
