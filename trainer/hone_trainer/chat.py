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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from hone_trainer.data import Example

IGNORE_INDEX = -100


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

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     **self._special)

    def text_and_spans(self, example: Example) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans the loss is computed on."""
        messages = example.as_dicts()
        text = self.render(messages)
        spans = []
        for i, m in enumerate(example.messages):
            if m.role != "assistant" or not m.weight:
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[: i + 1])
            if not (upto.startswith(prompt) and text.startswith(upto)):
                raise TemplateError(
                    "the chat template renders a conversation differently from its prefixes "
                    f"(line {example.line}, message {i}); Hone needs a prefix-stable template to mask the loss")
            spans.append((len(prompt), len(upto)))
        return text, spans

    def encode(self, examples: Sequence[Example], truncate: bool = True) -> list[Encoded]:
        """Token ids and labels for each example; batched through the Rust tokenizer."""
        rendered = [self.text_and_spans(e) for e in examples]
        batch = self.tokenizer([t for t, _ in rendered], add_special_tokens=False,
                               return_offsets_mapping=True, return_attention_mask=False)
        out = []
        for (text, spans), ids, offsets in zip(rendered, batch["input_ids"], batch["offset_mapping"]):
            labels = []
            for token, (start, end) in zip(ids, offsets):
                inside = any(a <= start < b for a, b in spans) if end > start else False
                labels.append(token if inside else IGNORE_INDEX)
            full = len(ids)
            if truncate and full > self.max_seq_length:
                ids, labels = ids[: self.max_seq_length], labels[: self.max_seq_length]
            out.append(Encoded(list(ids), labels, truncated=full > self.max_seq_length, full_length=full))
        return out
