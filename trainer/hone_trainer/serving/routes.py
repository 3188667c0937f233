"""The /v1 routes: from a validated request to prompts for the engine, and the model list.

``n``, sampling and streaming are :mod:`hone_trainer.serving.generation`'s;
auth, readiness and capacity are the app's guard around every route here.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from hone_trainer.serving.generation import respond
from hone_trainer.serving.protocol import ApiError, ChatRequest, CompletionRequest, SamplingRequest
from hone_trainer.serving.state import RequestContext, State


async def list_models(ctx: RequestContext) -> Response:
    return JSONResponse({"object": "list", "data": [model_card(ctx.state, n) for n in ctx.state.served.names]})


async def get_model(ctx: RequestContext) -> Response:
    name = ctx.request.path_params["model"]
    ctx.adapter(name)
    return JSONResponse(model_card(ctx.state, name))


def model_card(state: State, name: str) -> dict[str, Any]:
    served = state.served
    art = served.artifacts.get(name)
    created = state.created
    if art is not None and art.manifest.get("createdAt"):
        from datetime import datetime

        created = int(datetime.fromisoformat(art.manifest["createdAt"]).timestamp())
    return {"id": name, "object": "model", "created": created, "owned_by": "hone",
            "root": served.base_name if art is not None else name,
            "parent": served.base_name if art is not None else None}


def completion_budget(ctx: RequestContext, prompt_len: int, req: SamplingRequest, param: str) -> int:
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


async def chat_completions(ctx: RequestContext) -> Response:
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
    max_tokens = completion_budget(ctx, len(prompt), req, "messages")
    return await respond(ctx, req, adapter, [prompt], max_tokens, chat=True)


async def completions(ctx: RequestContext) -> Response:
    req: CompletionRequest = await ctx.body(CompletionRequest)
    adapter = ctx.adapter(req.model)
    tokenizer = ctx.state.served.tokenizer
    texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    if any(not p for p in prompts):
        raise ApiError(400, "prompt: a prompt is empty", param="prompt")
    max_tokens = min(completion_budget(ctx, len(p), req, "prompt") for p in prompts)
    return await respond(ctx, req, adapter, prompts, max_tokens, chat=False)
