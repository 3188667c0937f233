"""Chat examples to token ids and loss labels, exactly as training sees them.

One function serves the validator (counting) and the trainer (batches), so
the counts in ``status.dataset`` are the tokens that are trained.

Loss masks come from the rendered text, not from ``{% generation %}``
markers (most chat templates, SmolLM2's among them, have none): for each
trained assistant message the template is rendered up to the message with a
generation prompt and up to its end; the characters between the two are the
message's reply including the template's end-of-turn token, so the model also
learns to stop. Tokens whose first character falls in such a span get labels;
all others get -100.

That exact method renders a conversation 2n+1 times. The fast path renders
it once, with private-use characters around each assistant reply, and adds
the template's end-of-turn text found by a probe at start-up. It is used only
when the probe shows it gives exactly the spans of the exact method for this
template (a template that trims or rewrites the content fails the probe), and
an example that cannot use it (it contains the marker characters) falls back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from hone_trainer import templating
from hone_trainer.training.data import Example

IGNORE_INDEX = -100
_PROBES = [
    [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": " Hi there "},
     {"role": "assistant", "content": " Hello!\n"}, {"role": "user", "content": "More?"},
     {"role": "assistant", "content": "Sure."}],
    [{"role": "user", "content": "Question"}, {"role": "assistant", "content": "Answer"}],
]


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be used for training."""


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is computed
    truncated: bool = False
    full_length: int = 0  # before truncation

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


class ChatFormatter:
    """Renders conversations with a tokenizer's own chat template."""

    def __init__(self, tokenizer: Any, max_seq_length: int):
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError("the tokenizer has no chat template; use an instruct/chat model or set one")
        if not getattr(tokenizer, "is_fast", False):
            raise TemplateError("a fast (Rust) tokenizer is needed for character offsets")
        from transformers.utils.chat_template_utils import _compile_jinja_template

        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self._template = _compile_jinja_template(tokenizer.chat_template)
        self._special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
        self._specials = templating.special_tokens(tokenizer)
        self._turn_end = self._probe_turn_end()

    def _exact_spans(self, messages: list[dict[str, str]], trained: list[int], text: str,
                     line: int) -> list[tuple[int, int]]:
        spans = []
        for i in trained:
            prompt = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[: i + 1])
            if not (upto.startswith(prompt) and text.startswith(upto)):
                raise TemplateError(
                    "the chat template renders a conversation differently from its prefixes "
                    f"(line {line}, message {i}); Hone needs a prefix-stable template to mask the loss")
            spans.append((len(prompt), len(upto)))
        return spans

    def _marked(self, messages: list[dict[str, str]], trained: list[int]) -> tuple[str, list[tuple[int, int]]] | None:
        """One render with markers: (text, content spans), or None if the markers did not survive intact."""
        return templating.render_marked(self.render, messages, trained)

    def _probe_turn_end(self) -> str | None:
        """The text a template puts after every assistant reply, if the fast path is exact for it."""
        ends: set[str] = set()
        for probe in _PROBES:
            trained = [i for i, m in enumerate(probe) if m["role"] == "assistant"]
            try:
                text = self.render(probe)
                exact = self._exact_spans(probe, trained, text, 0)
                marked = self._marked(probe, trained)
            except Exception:
                return None
            if marked is None or marked[0] != text:
                return None
            for (a, b), (s, e) in zip(exact, marked[1]):
                if s != a or not b >= e:
                    return None
                ends.add(text[e:b])
        return ends.pop() if len(ends) == 1 else None

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     **self._special)

    def text_and_spans(self, example: Example) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans the loss is computed on."""
        messages = example.as_dicts()
        trained = [i for i, m in enumerate(example.messages) if m.role == "assistant" and m.weight]
        if self._turn_end is not None:
            marked = self._marked(messages, trained)
            if marked is not None:
                text, spans = marked
                end = len(self._turn_end)
                if all(text[e:e + end] == self._turn_end for _, e in spans):
                    return text, [(s, e + end) for s, e in spans]
        text = self.render(messages)
        return text, self._exact_spans(messages, trained, text, example.line)

    def literal_spans(self, example: Example, text: str) -> list[tuple[int, int]] | None:
        """The spans of ``text`` (this example rendered) holding message content with a special token's
        text, to be tokenized as plain text: [] when there is none, None when the template does not keep
        that content verbatim (then it cannot be kept apart from the template's own tokens)."""
        messages = example.as_dicts()
        hits = [i for i, m in enumerate(messages) if templating.special_in(m["content"], self._specials)]
        if not hits:
            return []
        marked = templating.render_marked(self.render, messages, hits)
        if marked is None or marked[0] != text:
            return None
        return marked[1]

    def encode(self, examples: Sequence[Example], truncate: bool = True) -> list[Encoded]:
        """Token ids and labels for each example; batched through the Rust tokenizer. Content holding a
        special token's text is tokenized as plain text (:mod:`hone_trainer.templating`)."""
        rendered = [self.text_and_spans(e) for e in examples]
        literal = [self.literal_spans(e, text) for e, (text, _) in zip(examples, rendered)]
        for e, spans in zip(examples, literal):
            if spans is None:
                raise TemplateError(f"line {e.line}: a message holds a special token's text and this chat "
                                    "template does not keep message content verbatim, so it cannot be trained "
                                    "as text; remove it from the content")
        plain = [i for i, spans in enumerate(literal) if not spans]
        batch = self.tokenizer([rendered[i][0] for i in plain], add_special_tokens=False,
                               return_offsets_mapping=True, return_attention_mask=False) if plain else None
        tokens: dict[int, tuple[list[int], list[tuple[int, int]]]] = {}
        for k, i in enumerate(plain):
            tokens[i] = batch["input_ids"][k], batch["offset_mapping"][k]  # type: ignore[index]
        for i, spans in enumerate(literal):
            if spans:
                tokens[i] = templating.encode(self.tokenizer, rendered[i][0], spans, offsets=True)
        out = []
        for i, (text, spans) in enumerate(rendered):
            ids, offsets = tokens[i]
            ids_arr = np.asarray(ids, dtype=np.int64)
            off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
            if spans:
                span_starts = np.fromiter((a for a, _ in spans), dtype=np.int64, count=len(spans))
                span_ends = np.fromiter((b for _, b in spans), dtype=np.int64, count=len(spans))
                k = np.searchsorted(span_starts, off[:, 0], side="right") - 1
                inside = (k >= 0) & (off[:, 0] < span_ends[np.maximum(k, 0)]) & (off[:, 1] > off[:, 0])
                labels = np.where(inside, ids_arr, IGNORE_INDEX)
            else:
                labels = np.full_like(ids_arr, IGNORE_INDEX)
            full = len(ids_arr)
            if truncate and full > self.max_seq_length:
                ids_arr, labels = ids_arr[: self.max_seq_length], labels[: self.max_seq_length]
            out.append(Encoded(ids_arr.tolist(), labels.tolist(), truncated=full > self.max_seq_length,
                               full_length=full))
        return out
