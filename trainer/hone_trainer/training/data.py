"""Reading and checking chat JSONL files in OpenAI's fine-tuning format.

Pure Python (no torch, no tokenizer): the first half of the ValidatingFiles
step. Every line is checked on its own; a bad line is reported with its
number and what is wrong, and the reading goes on. Nothing a file can
contain (binary junk, a 2 GB line, a wrong encoding, nothing at all) makes
this module raise.

One line is one example::

    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "weight": 1}]}

Roles are system, user and assistant. ``weight`` (0 or 1, assistant messages
only) says whether the model is trained on that message; the default is 1.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import IO, Any, Iterator, Literal

from hone_trainer.contract import Problem, ProblemKind

ROLES = ("system", "user", "assistant")
#: A line longer than this is reported, not parsed (a chat example is never that big).
MAX_LINE_BYTES = 8 * 1024 * 1024
MIN_EXAMPLES = 10
RECOMMENDED_EXAMPLES = 50
#: Problems kept with their details; all are counted.
MAX_PROBLEMS = 100

FileKind = Literal["training", "validation"]


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    weight: int = 1  # 0: not trained on (assistant messages only)


@dataclass(frozen=True)
class Example:
    line: int
    messages: tuple[Message, ...]

    @property
    def fingerprint(self) -> str:
        """Identity of the conversation, for duplicates and train/validation overlap."""
        data = json.dumps([(m.role, m.content) for m in self.messages], ensure_ascii=False)
        return hashlib.sha256(data.encode()).hexdigest()

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


@dataclass
class ReadResult:
    file: FileKind
    examples: list[Example] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    problem_counts: dict[str, int] = field(default_factory=dict)
    invalid_lines: int = 0
    blank_lines: int = 0

    def problem(self, kind: ProblemKind, message: str, line: int | None = None) -> None:
        self.problem_counts[kind.value] = self.problem_counts.get(kind.value, 0) + 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(file=self.file, line=line, kind=kind, message=message))


def iter_lines(fp: IO[bytes], max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(1-based number, raw line) of each line; ``None`` for a line over ``max_bytes``.

    Reads in blocks, so a single enormous line never has to fit in memory.
    """
    number = 0
    buf = b""
    too_long = False
    while True:
        block = fp.read(1 << 20)
        if not block:
            break
        buf += block  # only the unfinished tail of the previous block is carried over
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            number += 1
            line = buf[start:nl]
            yield number, None if too_long or len(line) > max_bytes else line
            too_long = False
            start = nl + 1
        buf = buf[start:]  # one copy per block, not one per line: linear in the file's size
        if len(buf) > max_bytes:
            too_long, buf = True, b""
    if buf or too_long:
        number += 1
        yield number, None if too_long or len(buf) > max_bytes else buf


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_example(obj: Any, line: int, result: ReadResult) -> Example | None:
    """Check one decoded line; report the first problem found on it."""
    if not isinstance(obj, dict):
        result.problem(ProblemKind.NOT_AN_OBJECT,
                       f"line is {type(obj).__name__}, not an object like {{\"messages\": [...]}}", line)
        return None
    messages = obj.get("messages")
    if messages is None:
        keys = ", ".join(sorted(map(str, obj))) or "none"
        result.problem(ProblemKind.MISSING_MESSAGES, f"no \"messages\" key (keys: {keys})", line)
        return None
    if not isinstance(messages, list) or not messages:
        result.problem(ProblemKind.MISSING_MESSAGES, "\"messages\" must be a non-empty list", line)
        return None
    parsed: list[Message] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            result.problem(ProblemKind.INVALID_MESSAGE, f"{where} is {type(m).__name__}, not an object", line)
            return None
        role = m.get("role")
        if role not in ROLES:
            result.problem(ProblemKind.UNKNOWN_ROLE,
                           f"{where}.role is {_preview(role)}; use one of {', '.join(ROLES)}", line)
            return None
        content = m.get("content")
        if not isinstance(content, str):
            what = "missing" if content is None else f"a {type(content).__name__}"
            result.problem(ProblemKind.INVALID_CONTENT, f"{where}.content is {what}; it must be a string", line)
            return None
        if not content.strip():
            result.problem(ProblemKind.EMPTY_CONTENT, f"{where}.content ({role}) is empty", line)
            return None
        try:
            content.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON allows "\ud800" alone; no tokenizer or UTF-8 file does
            result.problem(ProblemKind.INVALID_CONTENT,
                           f"{where}.content has an unpaired surrogate escape (\\u{ord(content[exc.start]):04x}) "
                           f"at character {exc.start + 1}; write the character itself or remove it", line)
            return None
        weight = m.get("weight", 1)
        if "weight" in m and (role != "assistant" or weight not in (0, 1) or isinstance(weight, bool)):
            why = "only assistant messages take a weight" if role != "assistant" else "weight must be 0 or 1"
            result.problem(ProblemKind.INVALID_WEIGHT, f"{where}.weight {_preview(weight)}: {why}", line)
            return None
        extra = set(m) - {"role", "content", "weight", "name"}
        if extra:
            result.problem(ProblemKind.INVALID_MESSAGE,
                           f"{where} has unsupported key(s) {', '.join(sorted(extra))}", line)
            return None
        parsed.append(Message(role, content, int(weight)))
    if not any(m.role == "assistant" and m.weight for m in parsed):
        result.problem(ProblemKind.NO_ASSISTANT_MESSAGE,
                       "no assistant message to learn from (or every assistant message has weight 0)", line)
        return None
    return Example(line=line, messages=tuple(parsed))


def read_jsonl(fp: IO[bytes], file: FileKind = "training") -> ReadResult:
    """Read every line of a chat JSONL file; never raises on bad content."""
    result = ReadResult(file=file)
    for number, raw in iter_lines(fp):
        if raw is None:
            result.invalid_lines += 1
            result.problem(ProblemKind.LINE_TOO_LONG,
                           f"line is longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB; split the conversation",
                           number)
            continue
        if not raw.strip():
            result.blank_lines += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            result.invalid_lines += 1
            result.problem(ProblemKind.INVALID_ENCODING,
                           f"not UTF-8 (byte {exc.start + 1}); save the file as UTF-8", number)
            continue
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            result.invalid_lines += 1
            detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "nested too deep"
            result.problem(ProblemKind.INVALID_JSON, f"invalid JSON: {detail}", number)
            continue
        example = parse_example(obj, number, result)
        if example is None:
            result.invalid_lines += 1
        else:
            result.examples.append(example)
    if not result.examples and not result.invalid_lines:
        result.problem(ProblemKind.EMPTY_FILE, "the file has no examples")
    return result
