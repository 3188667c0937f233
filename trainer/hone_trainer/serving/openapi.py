"""``GET /openapi.json``: the server's own OpenAPI 3.1 description, generated from the request models.

The request bodies are :mod:`~hone_trainer.serving.protocol`'s pydantic models, so what the schema says
a request may hold is what the server validates; every error answer is OpenAI's error object. Client
generators and API gateways read it; the test suite fuzzes the server from it (schemathesis).
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from hone_trainer import __version__
from hone_trainer.serving.protocol import NEUTRAL, ChatRequest, CompletionRequest

_REF = "#/components/schemas/{model}"

ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {400: "the request is invalid (the message and param name the field)", 401: "missing or wrong API key",
               404: "no such model or URL", 405: "method not allowed", 413: "the body is over maxRequestBytes",
               429: "at capacity: retry after Retry-After", 503: "the model is still loading"}
    return {str(c): {"description": reasons[c],
                     "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}}}
            for c in codes}


def _json(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}


def document(api_keys: bool, models: list[str] | None = None, context_length: int | None = None) -> dict[str, Any]:
    """The OpenAPI document; once loaded, ``models`` (the served names) and ``context_length`` make the
    request schemas say exactly which models and how many tokens this server takes."""
    _, defs = models_json_schema([(ChatRequest, "validation"), (CompletionRequest, "validation")],
                                 ref_template=_REF)
    schemas = {**defs["$defs"], "ErrorResponse": ERROR}
    for name in ("ChatRequest", "CompletionRequest"):
        props = schemas[name]["properties"]
        for field, neutral in NEUTRAL.items():  # fields it cannot honour: only the values that ask for nothing
            if field in props:
                props[field] = {"anyOf": [{"enum": list(neutral)}, {"type": "null"}] if neutral else [{"type": "null"}],
                                "description": "Not supported by this server: only the value that asks for nothing."}
        if models:
            props["model"] = {"type": "string", "enum": models, "description": "A model this server serves."}
        if context_length:
            for field in ("max_tokens", "max_completion_tokens"):
                if field in props:
                    props[field] = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": context_length - 1},
                                              {"type": "null"}], "description": "Prompt and completion share the "
                                    f"model's context of {context_length} tokens."}

    def generate(model: str, op_id: str, summary: str) -> dict[str, Any]:
        return {"post": {
            "operationId": op_id, "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": _REF.format(model=model)}}}},
            "responses": {"200": {"description": "the completion (JSON), or server-sent events with stream: true",
                                  "content": {"application/json": {"schema": {"type": "object"}},
                                              "text/event-stream": {"schema": {"type": "string"}}}},
                          **_errors(400, 401, 404, 413, 429, 503)}}}

    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Hone inference server", "version": __version__,
                 "description": "OpenAI-compatible chat and text completions for a base model and its LoRA "
                                "adapters; usage is metered in /metrics exactly as answered."},
        "paths": {
            "/v1/chat/completions": generate("ChatRequest", "createChatCompletion", "Chat completion"),
            "/v1/completions": generate("CompletionRequest", "createCompletion", "Text completion"),
            "/v1/models": {"get": {"operationId": "listModels", "summary": "The served models",
                                   "responses": {"200": _json("a list of model objects"), **_errors(401, 503)}}},
            "/v1/models/{model}": {"get": {
                "operationId": "retrieveModel", "summary": "One served model",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json("the model object"), **_errors(401, 404, 503)}}},
            "/health": {"get": {"operationId": "health", "summary": "Liveness: the process serves HTTP",
                                "responses": {"200": _json("alive")}}},
            "/ready": {"get": {"operationId": "ready", "summary": "Readiness: the model and every adapter loaded",
                               "responses": {"200": _json("ready"), "503": _json("loading, or failed to load")}}},
        },
        "components": {"schemas": schemas},
    }
    if api_keys:
        doc["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        for path, item in doc["paths"].items():
            if path.startswith("/v1/"):
                for op in item.values():
                    op["security"] = [{"apiKey": []}]
    return doc
