"""The /v1 routes: from a validated request to prompts for the engine, and the model list.

``n``, sampling and streaming are :mod:`hone_trainer.serving.generation`'s;
auth, readiness and capacity are the app's guard around every route here.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from hone_trainer import templating
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


def _sequences(ctx: RequestContext, prompts: int, n: int, param: str) -> None:
    limit = ctx.state.config.max_sequences_per_request
    if prompts * n > limit:
        raise ApiError(400, f"{param}: this request asks for {prompts * n} sequences ({prompts} prompt(s) x n={n}); "
                       f"this server decodes at most {limit} per request", param=param)


def chat_prompt(state: State, messages: list[dict[str, str]]) -> list[int]:
    """The prompt's token ids: the chat template rendered, content read as text (no forged turns)."""
    tokenizer = state.served.tokenizer

    def render(msgs: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    try:
        text = render(messages)
    except Exception as exc:  # noqa: BLE001 - templates raise for e.g. roles out of order
        raise ApiError(400, f"messages: the model's chat template refused them: {exc}", param="messages") from exc
    policy = state.config.special_tokens_in_content
    hits = [(i, s) for i, m in enumerate(messages) if (s := templating.special_in(m["content"], state.specials))]
    if not hits or policy == "parse":
        return templating.encode(tokenizer, text)[0]
    i, special = hits[0]
    param = f"messages[{i}].content"
    if policy == "reject":
        raise ApiError(400, f"{param}: holds {special!r}, the text of a special token of this model's tokenizer; "
                       "this server refuses it (special_tokens_in_content: reject)", param=param,
                       code="special_token_in_content")
    marked = templating.render_marked(render, messages, [i for i, _ in hits])
    if marked is None or marked[0] != text:
        raise ApiError(400, f"{param}: holds {special!r}, the text of a special token, and this model's chat "
                       "template does not keep message content verbatim, so it cannot be read as plain text; "
                       "remove it", param=param, code="special_token_in_content")
    return templating.encode(tokenizer, text, marked[1])[0]


def completion_prompts(state: State, texts: list[str]) -> list[list[int]]:
    """Each prompt's token ids, with the tokenizer's special tokens at the start as it adds them."""
    tokenizer = state.served.tokenizer
    policy = state.config.special_tokens_in_content
    out = []
    for i, text in enumerate(texts):
        special = templating.special_in(text, state.specials)
        if special is not None and policy == "reject":
            param = "prompt" if len(texts) == 1 else f"prompt[{i}]"
            raise ApiError(400, f"{param}: holds {special!r}, the text of a special token of this model's "
                           "tokenizer; this server refuses it (special_tokens_in_content: reject)", param=param,
                           code="special_token_in_content")
        literal = special is not None and policy == "text"
        out.append(tokenizer(text, split_special_tokens=literal)["input_ids"])
    return out


async def chat_completions(ctx: RequestContext) -> Response:
    req: ChatRequest = await ctx.body(ChatRequest)
    adapter = ctx.adapter(req.model)
    state = ctx.state
    if len(req.messages) > state.config.max_messages:
        raise ApiError(400, f"messages: {len(req.messages)} messages; this server takes at most "
                       f"{state.config.max_messages} per request", param="messages")
    _sequences(ctx, 1, req.n, "n")
    prompt = await state.tokenizing(chat_prompt, state, [m.for_template() for m in req.messages])
    max_tokens = completion_budget(ctx, len(prompt), req, "messages")
    return await respond(ctx, req, adapter, [prompt], max_tokens, chat=True)


async def completions(ctx: RequestContext) -> Response:
    req: CompletionRequest = await ctx.body(CompletionRequest)
    adapter = ctx.adapter(req.model)
    texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    _sequences(ctx, len(texts), req.n, "prompt" if len(texts) > 1 else "n")
    prompts = await ctx.state.tokenizing(completion_prompts, ctx.state, texts)
    if any(not p for p in prompts):
        raise ApiError(400, "prompt: a prompt is empty", param="prompt")
    max_tokens = min(completion_budget(ctx, len(p), req, "prompt") for p in prompts)
    return await respond(ctx, req, adapter, prompts, max_tokens, chat=False)
