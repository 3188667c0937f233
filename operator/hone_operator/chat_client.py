"""A minimal streaming client for ``hone chat`` (standard library only: the CLI needs no SDK)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Callable


class ChatError(RuntimeError):
    pass


def stream_chat(url: str, api_key: str, model: str, messages: list[dict[str, str]], max_tokens: int,
                temperature: float, on_text: Callable[[str], None], timeout: float = 600
                ) -> tuple[str, dict[str, int] | None, str | None]:
    """POST a streaming chat completion; calls ``on_text`` per piece; returns (answer, usage, finish_reason)."""
    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(f"{url.rstrip('/')}/chat/completions", data=body, headers=headers, method="POST")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise ChatError(f"HTTP {exc.code}: {_message(exc.read())}") from exc
    except urllib.error.URLError as exc:
        raise ChatError(f"cannot reach {url}: {exc.reason} (is `hone serve` running?)") from exc
    answer, usage, finish = [], None, None
    with resp:
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk: dict[str, Any] = json.loads(data)
            if "error" in chunk:
                raise ChatError(chunk["error"].get("message", "the server reported an error"))
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    answer.append(piece)
                    on_text(piece)
                finish = choice.get("finish_reason") or finish
            usage = chunk.get("usage") or usage
    return "".join(answer), usage, finish


def _message(raw: bytes) -> str:
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace")[:500]
