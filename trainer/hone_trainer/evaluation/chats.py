"""The evaluation step's JSONL files (the eval file, a safety suite): one chat a line, errors naming the line."""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

ROLES = ("system", "developer", "user", "assistant")


def chat_lines(lines: Iterable[str], source: str
               ) -> Iterator[tuple[int, str, dict[str, Any], list[dict[str, str]]]]:
    """``(line number, where, line's object, its messages)`` for each non-blank line; ValueError naming ``source`` and the line
    for one that is not a JSON object with a non-empty list of ``{role, content}`` messages of text."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{where}: not JSON ({exc})") from None
        messages = row.get("messages") if isinstance(row, dict) else None
        if (not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                for m in messages)):
            raise ValueError(f"{where}: messages must be a non-empty list of {{role, content}} objects with text "
                             "content")
        yield number, where, row, [{"role": m["role"], "content": m["content"]} for m in messages]
