"""The built-in OpenAI-compatible server: ``python -m hone_trainer serve``.

Endpoints:

* ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream``
  with server-sent events, ``stream_options.include_usage``), ``GET /v1/models``;
* ``GET /health`` (the process is alive), ``GET /ready`` (the model and every
  adapter are loaded), ``GET /metrics`` (Prometheus), ``GET /openapi.json``
  (this API's OpenAPI 3.1 description, from the request models).

Every response carries ``usage`` counted with the model's tokenizer, and the
``hone_inference_tokens_total`` counters move by what the client was sent:
a 200's ``usage``, nothing for a failed request or one whose client left, a
stream's delivered chunks (:mod:`~hone_trainer.serving.generation`). Errors
use OpenAI's error object and status codes, for every route (400 names the
field, 401, 404 for an unknown model or URL, 405, 413 for a body over
``max_request_bytes``, 429 when the queue is full, 503 while loading).

The model loads in the background after the port opens, so liveness probes
pass at once and readiness turns true when loading is done. A model that
cannot be loaded ends the process with exit code 5 and the reason on stderr
(and in the termination log in a pod).

The package splits the ground as vLLM's OpenAI server does: ``protocol``
(request models, errors), ``routes`` (one function per endpoint),
``generation`` (a request's choices and its response or stream), ``metrics``,
``auth``, ``state``; ``loading`` (verified base model and adapters) and
``engine`` (continuous batching) below them. This module is the app, its
guard and its lifecycle.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hone_trainer import templating
from hone_trainer.contract import ServerConfig
from hone_trainer.serving import routes
from hone_trainer.serving.auth import ApiKeys
from hone_trainer.serving.metrics import Metrics
from hone_trainer.serving.protocol import ApiError
from hone_trainer.serving.state import RequestContext, State

log = logging.getLogger("hone.server")


def create_app(config: ServerConfig, *, load: bool = True, on_load_error: Any = None) -> Starlette:
    """The ASGI app; ``on_load_error()`` is called when the models cannot be loaded."""
    state = State(config)
    state.metrics = Metrics(config, state) if config.metrics_enabled else None
    if config.api_keys_file:
        state.keys = ApiKeys(config.api_keys_file)
    if config.quota is not None:
        from hone_trainer.serving.quota import Quota

        state.quota = Quota.from_env(config.quota)

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = None
        if state.quota is not None:
            state.quota.start()
        if load:
            loader = threading.Thread(target=load_models, args=(state, on_load_error), name="hone-loader", daemon=True)
            loader.start()
            app.state.loader = loader
        yield
        if state.quota is not None:
            await state.quota.stop()
        if state.engine is not None:
            state.engine.stop()
        state.tokenizer_thread.shutdown(wait=False)

    def v1(endpoint: str, handler: Any) -> Any:
        return functools.partial(_guard, state, endpoint=endpoint, handler=handler)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        return _ready(state)

    async def metrics(request: Request) -> Response:
        return _metrics(state)

    async def openapi_json(request: Request) -> Response:
        from hone_trainer.serving.openapi import document

        loaded = state.ready
        return JSONResponse(document(api_keys=state.keys is not None,
                                     models=list(state.served.names) if loaded else None,
                                     context_length=state.engine.context_length if loaded else None))

    async def http_error(request: Request, exc: Exception) -> Response:
        """404 and 405 as OpenAI's error object, like every other error of this server."""
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return ApiError(404, f"Invalid URL ({request.method} {request.url.path})").response()
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return ApiError(405, f"{request.method} is not allowed on {request.url.path}" +
                            (f"; use {allowed}" if allowed else ""), headers=dict(exc.headers or {})).response()
        return ApiError(exc.status_code, str(exc.detail)).response()

    app = Starlette(routes=[
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi_json),
        Route("/v1/models", v1("models", routes.list_models)),
        Route("/v1/models/{model:path}", v1("models", routes.get_model)),
        Route("/v1/chat/completions", v1("chat", routes.chat_completions), methods=["POST"]),
        Route("/v1/completions", v1("completions", routes.completions), methods=["POST"]),
    ], lifespan=lifespan, exception_handlers={HTTPException: http_error})  # type: ignore[arg-type]
    app.state.hone = state
    return app


def load_models(state: State, on_load_error: Any = None) -> None:
    """Load the base model and adapters, start the engine, turn ready (on the loader thread)."""
    from hone_trainer.serving import loading
    from hone_trainer.serving.engine import Engine

    try:
        served = loading.load(state.config)
    except Exception as exc:  # noqa: BLE001 - reported, then the process ends
        if isinstance(exc, loading.ServingError):
            state.load_error = str(exc)
            log.error("cannot serve: %s", exc)
        else:
            state.load_error = f"loading failed: {exc}"
            log.exception("loading failed")
        if on_load_error is not None:
            on_load_error()
        return
    adapters = [n for n in served.names.values() if n != "__base__"]
    engine = Engine(served.model, served.tokenizer, max_batch_size=state.config.max_batch_size, adapters=adapters,
                    eos_token_ids=served.eos_token_ids, prefix_cache_tokens=state.config.prefix_cache_tokens,
                    cpu_linear=state.config.cpu_linear)
    engine.start()
    state.specials = templating.special_tokens(served.tokenizer)
    state.served, state.engine = served, engine
    if state.metrics:
        for name, internal in served.names.items():
            state.metrics.info.labels(name, served.base_name, "false" if internal == "__base__" else "true").set(1)
    state.ready = True
    log.info("ready: serving %s", ", ".join(served.names))


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
    ctx = RequestContext(state, request, endpoint, time.monotonic())
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
        return _rate_headers(state, response)
    except ApiError as exc:
        _observe(ctx, exc.status)
        return _rate_headers(state, exc.response())
    except Exception as exc:  # noqa: BLE001 - a bug must not take the server down
        log.exception("request failed")
        _observe(ctx, 500)
        return _rate_headers(state, ApiError(500, f"internal error: {exc}", type="server_error").response())
    finally:
        if counted:
            _release(state, True)
        if ctx.ticket is not None and not ctx.streaming:  # a stream releases it when it ends
            state.quota.release(ctx.ticket, 0)  # no-op when the request's usage released it


def _rate_headers(state: State, response: Response) -> Response:
    """OpenAI's x-ratelimit-*-tokens headers, when the namespace's budget sets a limit."""
    if state.quota is not None:
        for name, value in state.quota.headers().items():
            response.headers.setdefault(name, value)
    return response


def _release(state: State, counted: bool) -> None:
    if counted:
        state.in_flight -= 1


def _observe(ctx: "RequestContext", code: int) -> None:
    metrics = ctx.state.metrics
    if metrics is None or ctx.endpoint == "models":
        return
    metrics.requests.labels(ctx.model_label, ctx.endpoint, str(code)).inc()
    if not ctx.streaming:  # a stream's duration is observed when its last byte is sent
        metrics.duration.labels(ctx.model_label, ctx.endpoint).observe(time.monotonic() - ctx.started)


def serve(config: ServerConfig, *, graceful_seconds: int = 30, termination_log: str | None = None,
          listen_fd: int | None = None) -> int:
    """Run until SIGTERM/SIGINT; in-flight requests finish first. Returns the exit code. ``listen_fd``: a
    listening TCP socket inherited from the parent, served instead of binding the config's host and port (the
    parent bound it, so the port it tells its clients cannot have been taken by anyone else meanwhile)."""
    import socket

    import uvicorn

    server: Any = None

    def stop() -> None:  # a model that cannot load ends the process instead of idling unready
        server.should_exit = True

    app = create_app(config, on_load_error=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_config=None,
                                           timeout_graceful_shutdown=graceful_seconds, access_log=False))
    server.run(sockets=None if listen_fd is None else [socket.socket(fileno=listen_fd)])
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
