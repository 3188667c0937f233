"""One request's generation: its n choices in the engine, and the response (JSON or a stream).

A request's sequences are fed by the engine thread through an asyncio queue.
They are submitted all or none, and a request never ends while one of them
still runs: a request that fails, or whose client goes away, cancels the rest
and waits until the engine has let go of them, so nothing decodes outside the
concurrency limit or unbilled.

Metering: what a user is billed is what they were sent.

* A JSON response is billed its ``usage`` when it is answered with 200. A
  request that fails (any status but 200) is billed nothing, and so is one
  whose client disconnected before the answer: its generation is cancelled.
* A stream is billed the completion tokens its delivered chunks carry (a
  chunk counts once the server has written it) and its prompt with the first
  chunk that carries anything generated (text or a finish reason). A stream
  that runs to its end has delivered every token, so that is its ``usage``;
  one abandoned midway is billed what reached the client. A generation error
  in a stream is sent as OpenAI's error object and ends the stream.

The meter moves before a client can see the end of a response (the JSON, or
a stream's ``[DONE]``), so a scrape after the answer always includes it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from hone_trainer.serving.protocol import ApiError, SamplingRequest
from hone_trainer.serving.state import RequestContext

#: Status recorded for a request whose client went away before its answer (nginx's convention).
CLIENT_CLOSED_REQUEST = 499
SEED_MODULUS = 2**64  # torch seeds are unsigned 64-bit: choice k of seed s uses (s + k) mod 2**64


@dataclass
class Choice:
    index: int
    seq: Any  # engine.SequenceState; its ``generated`` tokens are the choice's completion tokens
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    finished: bool = False
    delivered: int = 0  # completion tokens the client has been sent (streams)


class Generation:
    """The n choices (times prompts) of one request, fed by the engine thread."""

    def __init__(self, ctx: RequestContext, adapter: str, prompts: list[list[int]], req: SamplingRequest,
                 max_tokens: int):
        from hone_trainer.serving.engine import SamplingParams, SequenceState

        self.loop = asyncio.get_running_loop()
        self.ctx, self.state = ctx, ctx.state
        self.first_token_seen = False
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.per_prompt = req.n  # choices of one prompt: self.choices[k * n:(k + 1) * n]
        self.choices: list[Choice] = []
        self.events: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.unfinished = 0
        self.metered = False
        self.prompt_delivered = False
        for prompt in prompts:
            for k in range(req.n):
                seed = None if req.seed is None else (req.seed + k) % SEED_MODULUS
                params = SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                        stop=tuple(req.stop or ()), seed=seed)
                i = len(self.choices)
                seq = SequenceState(prompt_ids=prompt, adapter=adapter, params=params,
                                    emit=lambda ev, i=i: self.loop.call_soon_threadsafe(self.events.put_nowait, (i, ev)))
                self.choices.append(Choice(i, seq))

    def start(self) -> None:
        self.state.engine.submit([c.seq for c in self.choices])  # all or none
        self.unfinished = len(self.choices)

    async def next_event(self) -> tuple[Choice, Any]:
        i, ev = await self.events.get()
        choice = self.choices[i]
        if not self.first_token_seen and (ev.text or ev.finished):
            self.first_token_seen = True
            _ttft(self.ctx)
        if ev.finished:
            choice.finished, choice.finish_reason, choice.error = True, ev.finish_reason, ev.error
            self.unfinished -= 1
        else:
            choice.text += ev.text
        return choice, ev

    async def events_until_done(self) -> AsyncIterator[tuple[Choice, Any]]:
        while self.unfinished:
            yield await self.next_event()

    async def settle(self) -> None:
        """Cancel whatever still runs and wait until the engine has ended every sequence (one step at most)."""
        if self.unfinished:
            self.state.engine.cancel([c.seq for c in self.choices if not c.finished])
            while self.unfinished:
                await self.next_event()

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.seq.generated) for c in self.choices)

    @property
    def cached_tokens(self) -> int:
        """OpenAI's ``prompt_tokens_details.cached_tokens``: the prompt tokens read from the prefix cache, per
        prompt counted once, as its tokens are (those every choice of it read from the cache)."""
        n = self.per_prompt
        return sum(min(c.seq.cached_tokens for c in self.choices[k:k + n]) for k in range(0, len(self.choices), n))

    def usage(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}

    def delivered_usage(self) -> dict[str, Any]:
        """What a stream's client has been sent: its usage once the stream has run to its end."""
        prompt = self.prompt_tokens if self.prompt_delivered else 0
        completion = sum(c.delivered for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens if self.prompt_delivered else 0}}

    def meter(self, ctx: RequestContext, usage: dict[str, Any] | None) -> None:
        """Bill ``usage`` (None: nothing), once per request."""
        if self.metered:
            return
        self.metered = True
        if ctx.state.metrics is not None and usage is not None:
            ctx.state.metrics.meter(ctx.model_label, usage["prompt_tokens"], usage["completion_tokens"])
        if ctx.ticket is not None:  # the budget counts exactly what was billed
            ctx.state.quota.release(ctx.ticket, usage["total_tokens"] if usage is not None else 0)


async def respond(ctx: RequestContext, req: SamplingRequest, adapter: str, prompts: list[list[int]], max_tokens: int,
                  chat: bool) -> Response:
    if ctx.state.quota is not None:  # the request's largest possible usage, reserved in the namespace's budget
        ctx.ticket = await ctx.state.quota.admit(sum(len(p) for p in prompts) + max_tokens * req.n * len(prompts))
    gen = Generation(ctx, adapter, prompts, req, max_tokens)
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    gen.start()
    if req.stream:
        ctx.streaming = True
        return _Stream(ctx, gen, _stream(ctx, gen, req, rid, created, chat))
    collector = asyncio.ensure_future(_collect(gen))
    gone = asyncio.ensure_future(_client_gone(ctx.request))
    try:
        await asyncio.wait({collector, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        collector.cancel()
        await gen.settle()
        raise
    finally:
        gone.cancel()
    if not collector.done():  # the client went away first: stop generating for it, bill nothing
        collector.cancel()
        await gen.settle()
        gen.meter(ctx, None)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    try:
        collector.result()
    except ApiError:
        await gen.settle()
        gen.meter(ctx, None)
        raise
    usage = gen.usage()
    gen.meter(ctx, usage)
    choices = []
    for c in gen.choices:
        if chat:
            choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text, "refusal": None},
                            "logprobs": None, "finish_reason": c.finish_reason})
        else:
            choices.append({"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason})
    return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                         "model": req.model, "choices": choices, "usage": usage, "system_fingerprint": None})


async def _collect(gen: Generation) -> None:
    """Wait for every choice; the first one that fails fails the request (the rest are then cancelled)."""
    async for choice, ev in gen.events_until_done():
        if ev.finished and ev.finish_reason == "error":
            raise ApiError(500, choice.error or "generation failed", type="server_error")


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _ttft(ctx: RequestContext) -> None:
    if ctx.state.metrics is not None:
        ctx.state.metrics.ttft.labels(ctx.model_label, ctx.endpoint).observe(time.monotonic() - ctx.started)


class _Stream(StreamingResponse):
    """A stream that always ends its generation: when it is done, fails, or its client goes away (the
    disconnect can cancel the response between two chunks, when the stream's own code is not running),
    it cancels what still runs, bills what was delivered and frees the request's place."""

    def __init__(self, ctx: RequestContext, gen: Generation, body: AsyncIterator[str]):
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.ctx, self.gen = ctx, gen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            await self.gen.settle()
            self.gen.meter(self.ctx, self.gen.delivered_usage())
            metrics = self.ctx.state.metrics
            if metrics is not None:
                metrics.duration.labels(self.ctx.model_label, self.ctx.endpoint).observe(
                    time.monotonic() - self.ctx.started)
            if self.ctx.release:
                self.ctx.release()


async def _stream(ctx: RequestContext, gen: Generation, req: SamplingRequest, rid: str, created: int,
                  chat: bool) -> AsyncIterator[str]:
    """The chunks; each chunk's tokens count as delivered once the server has written it (the generator
    resumes only after that), so an abandoned stream is billed exactly what its client was sent."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
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

    if chat:
        yield chunk([choice(c, None, None, first=True) for c in gen.choices])
    async for c, ev in gen.events_until_done():
        if ev.finished and ev.finish_reason == "error":
            yield f"data: {json.dumps(ApiError(500, ev.error or 'generation failed', type='server_error').body())}\n\n"
            return  # the stream ends here; what was delivered is billed
        if ev.text or ev.finished:
            yield chunk([choice(c, ev.text or None, ev.finish_reason if ev.finished else None)])
            c.delivered = ev.tokens
            gen.prompt_delivered = True
    usage = gen.delivered_usage()  # everything has been delivered: the request's whole usage
    if req.include_usage:
        yield chunk([], usage)
    gen.meter(ctx, usage)  # before the client can see the end of the stream
    yield "data: [DONE]\n\n"
