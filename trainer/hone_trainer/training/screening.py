"""Data screening: personal data and blocklisted terms in chat examples, found, redacted or refused.

The validator and the trainer both run :func:`screen` on what they read, with the same settings, so the
redacted text the validator counts is the text the trainer trains on (and the trainer's check of the
validated counts would notice if they differed).

Detectors (each match is checked, not just pattern-matched, where the data has a checksum):

* ``email``: local@domain.tld.
* ``phone``: an international number (+ and 7 to 15 digits) or a grouped one like (415) 555-2671 or
  415-555-2671; a bare run of digits is not a phone number.
* ``payment_card``: 13 to 19 digits, in groups or not, that pass the Luhn check.
* ``iban``: a country code, two check digits and up to 30 letters and digits (spaces allowed every four),
  whose ISO 7064 mod-97 checksum is 1.
* The user's patterns (``regex`` module, a time limit per message so that no pattern can hang the step),
  and blocklisted terms, matched as whole words ignoring case.
* An OpenAI-compatible moderations endpoint, when one is named (:func:`moderate`, the validator only):
  every message is sent, in batches; a flagged one is a finding of kind ``moderation:<category>``. Its
  policy is report or reject. An endpoint that cannot be reached fails the validation: data that was to
  be moderated is never passed unmoderated.

A finding records the file, line, message and kind, never the matched text: a finding is there so that
someone can look at the line, not a second copy of the data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import regex

from hone_trainer.contract import DataScreening, Finding, ProblemKind, ScreeningResult
from hone_trainer.training.data import Example, ReadResult

#: Findings kept with their details (all are counted).
MAX_FINDINGS = 100
#: Seconds a user's pattern may take on one message.
PATTERN_SECONDS = 1.0

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
PHONE = re.compile(r"(?<![\w+])(?:\+\d[\d ().-]{6,18}\d|\(\d{3}\)\s?\d{3}[-. ]\d{4}|\d{3}[-.]\d{3}[-.]\d{4})(?![\w])")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    code = text.replace(" ", "")
    if not 15 <= len(code) <= 34:
        return False
    moved = code[4:] + code[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def _phone_digits(text: str) -> bool:
    return 7 <= sum(ch.isdigit() for ch in text) <= 15


@dataclass(frozen=True)
class Match:
    start: int
    end: int
    kind: str
    policy: str


def find(text: str, cfg: DataScreening) -> list[Match]:
    """Every match in ``text``, leftmost first, overlapping ones dropped (the earlier and longer wins)."""
    found: list[Match] = []
    if cfg.personal_data != "off":
        policy = cfg.personal_data
        kinds = set(cfg.kinds)
        if "email" in kinds:
            found += [Match(m.start(), m.end(), "email", policy) for m in EMAIL.finditer(text)]
        if "payment_card" in kinds:
            found += [Match(m.start(), m.end(), "payment_card", policy) for m in CARD.finditer(text)
                      if luhn(re.sub(r"\D", "", m.group()))]
        if "iban" in kinds:
            found += [Match(m.start(), m.end(), "iban", policy) for m in IBAN.finditer(text)
                      if iban_valid(m.group())]
        if "phone" in kinds:
            found += [Match(m.start(), m.end(), "phone", policy) for m in PHONE.finditer(text)
                      if _phone_digits(m.group())]
        for pattern in cfg.patterns:
            try:
                found += [Match(m.start(), m.end(), pattern.name, policy)
                          for m in regex.finditer(pattern.regex, text, timeout=PATTERN_SECONDS) if m.end() > m.start()]
            except TimeoutError:
                found.append(Match(0, 0, pattern.name, "reject"))  # cannot tell: refuse rather than pass
    if cfg.blocklist:
        words = "|".join(re.escape(term) for term in sorted(cfg.blocklist, key=len, reverse=True) if term.strip())
        if words:
            found += [Match(m.start(), m.end(), "blocklist", cfg.blocklist_policy)
                      for m in re.finditer(rf"(?<!\w)(?:{words})(?!\w)", text, re.IGNORECASE)]
    found.sort(key=lambda m: (m.start, -(m.end - m.start)))
    kept: list[Match] = []
    for m in found:
        if not kept or m.start >= kept[-1].end or m.end == m.start:
            kept.append(m)
    return kept


def redact(text: str, matches: list[Match]) -> str:
    """``text`` with every ``redact`` match replaced by ``[KIND]``."""
    out, at = [], 0
    for m in matches:
        if m.policy == "redact" and m.end > m.start:
            out += [text[at:m.start], f"[{m.kind.upper()}]"]
            at = m.end
    out.append(text[at:])
    return "".join(out)


def screen(read: ReadResult, cfg: DataScreening, result: ScreeningResult | None = None) -> ScreeningResult:
    """Screen every example of ``read`` in place: ``redact`` matches are replaced in its examples, ``reject``
    ones become problems naming the line; everything found is counted in ``result`` (returned)."""
    result = result or ScreeningResult()
    if cfg.personal_data == "off" and not cfg.blocklist:
        return result
    examples: list[Example] = []
    for example in read.examples:
        messages = list(example.messages)
        hit = False
        for i, message in enumerate(messages):
            matches = find(message.content, cfg)
            if not matches:
                continue
            hit = True
            for m in matches:
                result.counts[m.kind] = result.counts.get(m.kind, 0) + 1
                if len(result.findings) < MAX_FINDINGS:
                    result.findings.append(Finding(file=read.file, line=example.line, message=i, kind=m.kind,
                                                   action=m.policy))
            rejected = sorted({m.kind for m in matches if m.policy == "reject"})
            if rejected:
                what = ", ".join(rejected)
                read.problem(ProblemKind.SCREENING_REJECTED,
                             f"messages[{i}] holds {what} (data screening refuses it): remove it, or set "
                             "spec.dataScreening to redact it", example.line)
            if any(m.policy == "redact" for m in matches):
                redacted = redact(message.content, matches)
                if redacted != message.content:
                    messages[i] = replace(message, content=redacted)
                    result.redacted_messages += 1
        if hit:
            result.found(read.file, example.line)
        examples.append(replace(example, messages=tuple(messages)) if hit else example)
    read.examples = examples
    return result


#: Messages sent to the moderations endpoint in one request.
MODERATION_BATCH = 32


def _post_json(url: str, body: dict, timeout: float = 60.0, token: str | None = None) -> dict:
    import json
    import urllib.request

    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def moderate(read: ReadResult, cfg: DataScreening, result: ScreeningResult, post=_post_json) -> None:
    """Send every message of ``read`` to ``cfg.moderation_url``; flagged ones are findings (and problems, with
    the reject policy). An endpoint that fails or answers out of shape is a problem: nothing passes unchecked."""
    url = cfg.moderation_url
    if not url:
        return
    token = None
    if cfg.moderation_api_key_file:
        try:
            with open(cfg.moderation_api_key_file, encoding="utf-8") as fp:
                token = fp.read().strip()
        except OSError as exc:
            read.problem(ProblemKind.SCREENING_UNAVAILABLE,
                         f"the moderations endpoint's token cannot be read ({exc.strerror}: {cfg.moderation_api_key_file}):"
                         " check that the Secret of spec.dataScreening.moderation.apiKeySecret exists and has the "
                         "key api-key")
            return
    items = [(ex.line, i, m.content) for ex in read.examples for i, m in enumerate(ex.messages)]
    for start in range(0, len(items), MODERATION_BATCH):
        batch = items[start:start + MODERATION_BATCH]
        try:
            answer = post(url, {"input": [text for _, _, text in batch]}, token=token)
            results = answer["results"]
            if not isinstance(results, list) or len(results) != len(batch):
                raise ValueError(f"{len(batch)} inputs, {len(results) if isinstance(results, list) else 'no'} results")
        except Exception as exc:  # noqa: BLE001 - any failure: the data is not moderated, so it does not pass
            read.problem(ProblemKind.SCREENING_UNAVAILABLE,
                         f"the moderations endpoint {url} failed ({exc}); data screening needs its answer for every "
                         "message: check the endpoint, or remove spec.dataScreening.moderation")
            return
        for (line, i, _), r in zip(batch, results):
            if not (isinstance(r, dict) and r.get("flagged")):
                continue
            categories = sorted(k for k, v in (r.get("categories") or {}).items() if v)
            kind = f"moderation:{categories[0]}" if categories else "moderation"
            result.counts[kind] = result.counts.get(kind, 0) + 1
            if len(result.findings) < MAX_FINDINGS:
                result.findings.append(Finding(file=read.file, line=line, message=i, kind=kind,
                                               action=cfg.moderation_policy))
            result.found(read.file, line)
            if cfg.moderation_policy == "reject":
                read.problem(ProblemKind.SCREENING_REJECTED,
                             f"messages[{i}] was flagged by the moderations endpoint ({', '.join(categories) or 'flagged'}):"
                             " remove the example, or set spec.dataScreening.moderation.policy: report", line)
