"""One request's generation: its n choices in the engine, and the response (JSON or a stream).

A request's sequences are fed by the engine thread through an asyncio queue;
the response is metered once, from the same numbers as its ``usage``, before
a client can see the end of it (or when the client goes away).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from starlette.responses import JSONResponse, Response, StreamingResponse

from hone_trainer.serving.protocol import ApiError, SamplingRequest
from hone_trainer.serving.state import RequestContext, State


@dataclass
class Choice:
    index: int
    seq: Any  # engine.SequenceState; its ``generated`` tokens are the choice's completion tokens
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None


class Generation:
    """The n choices (times prompts) of one request, fed by the engine thread."""

    def __init__(self, state: State, adapter: str, prompts: list[list[int]], req: SamplingRequest, max_tokens: int):
        from hone_trainer.serving.engine import SamplingParams, SequenceState

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


async def respond(ctx: RequestContext, req: SamplingRequest, adapter: str, prompts: list[list[int]], max_tokens: int,
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


def _ttft(ctx: RequestContext) -> None:
    if ctx.state.metrics is not None:
        ctx.state.metrics.ttft.labels(ctx.model_label, ctx.endpoint).observe(time.monotonic() - ctx.started)


def _meter(ctx: RequestContext, gen: Generation) -> None:
    """Count the request's tokens, once (a stream meters before its last event, or when abandoned)."""
    if ctx.state.metrics is not None and not gen.metered:
        gen.metered = True
        ctx.state.metrics.meter(ctx.model_label, gen.metered_prompt_tokens, gen.completion_tokens)


async def _stream(ctx: RequestContext, gen: Generation, req: SamplingRequest, rid: str, created: int, chat: bool) -> AsyncIterator[str]:
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
