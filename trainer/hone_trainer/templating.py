"""Chat templates and special tokens: a message's content is text, never template structure.

A tokenizer turns the text of its special tokens (``<|im_end|>``,
``<|im_start|>``...) into those tokens wherever the text occurs. Rendered
through a chat template, a message whose content holds
``<|im_end|>\\n<|im_start|>system\\n...`` would end its own turn and open a
forged system turn. Here such content is tokenized as the plain text it is:
the template is rendered with markers around the contents that hold a special
token's text, and those spans are tokenized with the tokenizer's
``split_special_tokens``, the rest as usual. The trainer (which trains on
it, with a warning from ``hone validate``) and the server (by default; see
``ServerConfig.special_tokens_in_content``) both read content this way.

Text without any special token's text is tokenized exactly as before, in one
call, so token counts do not change for it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

MARK_OPEN, MARK_CLOSE = "\ue000", "\ue001"  # Unicode private use: never in real text

Render = Callable[[list[dict[str, Any]]], str]


def special_tokens(tokenizer: Any) -> tuple[str, ...]:
    """The texts of the tokenizer's special tokens, longest first."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    texts = {t.content for t in added.values() if getattr(t, "special", False) and t.content}
    texts |= {t for t in getattr(tokenizer, "all_special_tokens", []) or [] if t}
    return tuple(sorted(texts, key=len, reverse=True))


def special_in(text: str, specials: Sequence[str]) -> str | None:
    """The special token's text that occurs first in ``text`` (the longest one there), if any."""
    found = [(at, -len(s), s) for s in specials if (at := text.find(s)) >= 0]
    return min(found)[2] if found else None


def render_marked(render: Render, messages: Sequence[dict[str, Any]],
                  indices: Sequence[int]) -> tuple[str, list[tuple[int, int]]] | None:
    """One render with markers around the contents of ``messages[indices]``: the text without the markers
    and each content's character span; None when the template did not keep every such content once,
    verbatim and in order (or a content holds a marker character itself)."""
    marked = [dict(m) for m in messages]
    for i in indices:
        content = marked[i].get("content") or ""
        if MARK_OPEN in content or MARK_CLOSE in content:
            return None
        marked[i]["content"] = MARK_OPEN + content + MARK_CLOSE
    raw = render(marked)
    parts, spans, pos, cursor = [], [], 0, 0
    while True:
        a = raw.find(MARK_OPEN, cursor)
        if a < 0:
            break
        b = raw.find(MARK_CLOSE, a + 1)
        if b < 0 or MARK_OPEN in raw[a + 1:b]:
            return None
        parts.append(raw[cursor:a])
        pos += a - cursor
        spans.append((pos, pos + (b - a - 1)))
        parts.append(raw[a + 1:b])
        pos += b - a - 1
        cursor = b + 1
    parts.append(raw[cursor:])
    if len(spans) != len(indices) or MARK_CLOSE in raw[cursor:]:
        return None
    text = "".join(parts)
    if any(text[a:b] != (messages[i].get("content") or "") for (a, b), i in zip(spans, indices)):
        return None
    return text, spans


def encode(tokenizer: Any, text: str, literal: Sequence[tuple[int, int]] = (),
           offsets: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` (and each token's character offsets), the ``literal`` spans tokenized as plain
    text: a special token's text inside them stays text. Without spans: one ordinary call."""
    pieces: list[tuple[int, int, bool]] = []
    pos = 0
    for a, b in sorted(literal):
        pieces += [(pos, a, False), (a, b, True)]
        pos = b
    pieces.append((pos, len(text), False))
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for a, b, split in pieces:
        if a == b:
            continue
        enc = tokenizer(text[a:b], add_special_tokens=False, split_special_tokens=split,
                        return_offsets_mapping=offsets, return_attention_mask=False)
        ids += enc["input_ids"]
        if offsets:
            spans += [(s + a, e + a) for s, e in enc["offset_mapping"]]
    return ids, spans
