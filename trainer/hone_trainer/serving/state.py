"""What the app, its routes and the loader share for one server process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from hone_trainer.contract import ServerConfig
from hone_trainer.serving.auth import ApiKeys
from hone_trainer.serving.metrics import Metrics
from hone_trainer.serving.protocol import ApiError, SamplingRequest, parse_request

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


class RequestContext:
    """One /v1 request on its way through the guard, its route and its response."""

    def __init__(self, state: State, request: Request, endpoint: str, started: float):
        self.state, self.request, self.endpoint, self.started = state, request, endpoint, started
        self.model_label = UNKNOWN_MODEL_LABEL
        self.streaming = False
        self.release: Any = None

    async def body(self, model_cls: type[SamplingRequest]) -> Any:
        return parse_request(await self.request.body(), model_cls)

    def adapter(self, model: str) -> str:
        names = self.state.served.names
        if model not in names:
            raise ApiError(404, f"The model `{model}` does not exist. Served models: {', '.join(names)}",
                           param="model", code="model_not_found")
        self.model_label = model
        return names[model]
