"""OpenAI's request shapes and error object, as this server accepts and answers them.

Requests are validated into strict pydantic models: a field of the wrong
type is a 400 (``stream: "yes"`` and ``n: true`` are not coerced), a field
OpenAI defines that Hone cannot honour is refused with a 400 naming it unless
it has its neutral value (``response_format: {"type": "text"}``,
``logprobs: false``...), and a field OpenAI does not define is a 400 with
OpenAI's "Unrecognized request argument supplied". Every error leaves as
:class:`ApiError`, OpenAI's ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.responses import JSONResponse


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


def validation_error(exc: ValidationError) -> ApiError:
    """The most specific problem pydantic found, with the field as a path (``messages[0].content``)."""
    errors = exc.errors()
    first = max(errors, key=lambda e: len(_fields(e["loc"])))  # of a union's branches, the one that got furthest
    param = _path(_fields(first["loc"])) or None
    if first["type"] == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param=param)
    msg = first["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{param}: {msg}" if param else msg, param=param)


def _fields(loc: tuple[Any, ...]) -> list[Any]:
    """A pydantic error location without its union-branch tags (``str``, ``list[ContentPart]``...)."""
    return [p for p in loc if isinstance(p, int) or (p[:1].islower() and p.isidentifier() and
                                                    p not in ("str", "int", "float", "bool", "list", "dict", "none"))]


def _path(fields: list[Any]) -> str:
    out = ""
    for p in fields:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def parse_request(raw: bytes, model_cls: type["SamplingRequest"]) -> Any:
    """The request body as ``model_cls``, or an :class:`ApiError` 400 naming the field."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    bad = _lone_surrogate(data)
    if bad is not None:
        raise ApiError(400, f"{bad}: the text holds a lone UTF-16 surrogate (an escape such as \\ud800 without its "
                       "pair), which is not a character; send valid Unicode", param=bad)
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def _lone_surrogate(data: Any) -> str | None:
    """The path of the first string (key or value) that cannot be UTF-8: JSON allows ``"\\ud800"``, text does not."""
    todo: list[tuple[str, Any]] = [("", data)]
    while todo:
        path, value = todo.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path or "body"
        elif isinstance(value, dict):
            for k, v in value.items():
                sub = f"{path}.{k}" if path else str(k)
                todo.append((sub, k))
                todo.append((sub, v))
        elif isinstance(value, list):
            todo.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
    return None


#: Fields OpenAI defines that this server cannot honour, each with the values that ask for nothing
#: (what a client sends when it does not use the feature). Any other value is a 400 naming the field.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logprobs": (False,), "top_logprobs": (0,),
    "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",), "functions": ([],), "function_call": ("none",),
    "parallel_tool_calls": (True, False), "response_format": ({"type": "text"},), "modalities": (["text"],),
    "audio": (), "prediction": (), "reasoning_effort": (), "verbosity": (), "web_search_options": (),
    "store": (False,), "service_tier": ("auto", "default"), "best_of": (1,), "echo": (False,), "suffix": ("",),
}

def _json_integer(value: Any) -> Any:
    """JSON has one number type: 16.0 is the integer 16 (as JSON Schema's "integer" says), but true is no number."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer field: an int, or a float with no fraction; never a bool or a string (strict otherwise).
JsonInt = Annotated[int, BeforeValidator(_json_integer)]
NonEmpty = Annotated[str, Field(min_length=1)]

#: Seeds are 64-bit signed integers, as OpenAI's API declares them.
SEED_RANGE = (-(2**63), 2**63 - 1)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # OpenAI's padding against side channels; nothing to pad here


class SamplingRequest(BaseModel):
    """What chat and completion requests share: the model, sampling, stop, stream and n."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str = Field(min_length=1)
    max_tokens: JsonInt | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: JsonInt = Field(1, ge=1, le=16)
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=4)] | None = Field(
        None, description="Up to 4 sequences that end the completion.")
    seed: JsonInt | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Accepted, and change nothing in what is generated: who asks, and tags for the caller's own records.
    user: str | None = None
    metadata: dict[str, str] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    # OpenAI's fields this server cannot honour: accepted only with their neutral value (NEUTRAL).
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | JsonInt | None = None
    top_logprobs: JsonInt | None = None
    logit_bias: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None

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
    def _unsupported(self) -> "SamplingRequest":
        for name, neutral in NEUTRAL.items():
            if name in self.model_fields_set and getattr(self, name, None) is not None \
                    and getattr(self, name) not in neutral:
                raise ApiError(400, f"{name} is not supported by this server; leave it out" + (
                    f" or send {json.dumps(neutral[0])}" if neutral else ""), param=name)
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options is not None and self.stream_options.include_usage)

    @property
    def limit(self) -> int | None:
        return self.max_tokens


class ContentPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["text"] = Field(description="Only text parts: images, audio and files are not supported.")
    text: str

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("type") != "text":
            raise ValueError(f"only text parts are supported, not {str(v.get('type'))[:40]!r} "
                             "(images, audio and files are not)")
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    # an assistant turn as OpenAI returns it: only without tool calls, audio or a refusal
    refusal: None = None
    tool_calls: list[Any] | None = Field(None, max_length=0, description="Tool calls are not supported: none.")
    function_call: None = None
    audio: None = None

    @field_validator("tool_calls", mode="before")
    @classmethod
    def _no_tool_calls(cls, v: Any) -> Any:
        if isinstance(v, list) and v:
            raise ValueError("tool calls are not supported by this server")
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def for_template(self) -> dict[str, str]:
        """The message as chat templates read it (``developer`` is ``system`` to them)."""
        out = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.name is not None:
            out["name"] = self.name
        return out


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: JsonInt | None = Field(None, ge=1)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1)] = Field(
        description="The prompt, or a list of prompts (each gets n choices).")
    max_tokens: JsonInt | None = Field(16, ge=1)  # OpenAI's default for completions
    best_of: JsonInt | None = None
    echo: bool | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one prompt")
        if isinstance(v, list) and any(isinstance(p, (int, list)) for p in v):
            raise ValueError("prompts of token ids are not supported by this server; send the text")
        return v
