"""What the app, its routes and the loader share for one server process."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from starlette.requests import Request

from hone_trainer.contract import ServerConfig
from hone_trainer.serving.auth import ApiKeys
from hone_trainer.serving.metrics import Metrics
from hone_trainer.serving.protocol import ApiError, SamplingRequest, parse_request

T = TypeVar("T")
#: A body over the limit is read and dropped up to this many times the limit before the 413 is sent, so
#: that an ordinary client (still sending when it could not know) reads the error instead of a broken pipe.
DRAIN_FACTOR = 4

#: The model label of requests that never named a served model (bad JSON, 401, 404).
UNKNOWN_MODEL_LABEL = "(unknown)"


@dataclass
class State:
    """The server process: its config, what is loaded, and the requests in flight."""

    config: ServerConfig
    served: Any = None  # loading.Served once loaded
    engine: Any = None  # engine.Engine once loaded
    ready: bool = False
    load_error: str | None = None
    in_flight: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
    keys: ApiKeys | None = None
    metrics: Metrics | None = None
    quota: Any = None  # quota.Quota when the config names a quota endpoint
    specials: tuple[str, ...] = ()  # the texts of the tokenizer's special tokens, once loaded
    #: Requests are parsed and tokenized here, off the event loop (a huge prompt must not stall /health),
    #: one at a time: the tokenizer is not safe to call from several threads at once.
    tokenizer_thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="hone-tokenizer"))

    async def tokenizing(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.tokenizer_thread, fn, *args)


class RequestContext:
    """One /v1 request on its way through the guard, its route and its response."""

    def __init__(self, state: State, request: Request, endpoint: str, started: float):
        self.state, self.request, self.endpoint, self.started = state, request, endpoint, started
        self.model_label = UNKNOWN_MODEL_LABEL
        self.streaming = False
        self.release: Any = None
        self.ticket: Any = None  # the request's reservation in the inference budget (quota.Ticket)

    async def body(self, model_cls: type[SamplingRequest]) -> Any:
        """The request, read up to ``max_request_bytes`` (413 beyond) and parsed off the event loop."""
        limit = self.state.config.max_request_bytes
        too_large = ApiError(413, f"the request body is larger than this server's limit of {limit} bytes",
                             code="request_too_large")
        chunks, size = [], 0
        async for chunk in self.request.stream():
            size += len(chunk)
            if size > limit:
                # Read on (discarding, up to a bound) so that the client, still sending, gets to read the 413.
                if size <= DRAIN_FACTOR * limit:
                    chunks = []
                    continue
                raise too_large
            chunks.append(chunk)
        if size > limit:
            raise too_large
        raw = b"".join(chunks)
        if len(raw) < 65536:
            return parse_request(raw, model_cls)
        return await self.state.tokenizing(parse_request, raw, model_cls)

    def adapter(self, model: str) -> str:
        names = self.state.served.names
        if model not in names:
            raise ApiError(404, f"The model `{model}` does not exist. Served models: {', '.join(names)}",
                           param="model", code="model_not_found")
        self.model_label = model
        return names[model]
