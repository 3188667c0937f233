"""OpenAI's graders, run on one answer: ``string_check``, ``text_similarity`` and ``score_model``.

A grade is a score and whether it passed. A grader that cannot grade (a template names a field the line
lacks, the judge endpoint fails or answers without a number) raises :class:`GradingError`; the runner counts
that answer as not graded, never as a pass or a fail.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from hone_trainer.contract import JudgeEndpoint, ScoreModelGrader, StringCheckGrader, TextSimilarityGrader

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*\}\}")
_WORD = re.compile(r"\w+", re.UNICODE)


class GradingError(ValueError):
    """This answer could not be graded; the message says why."""


@dataclass(frozen=True)
class Grade:
    score: float
    passed: bool


def render(template: str, item: dict[str, Any], output_text: str) -> str:
    """``{{ sample.output_text }}`` and ``{{ item.a.b }}`` filled in; anything else is refused by name."""

    def value(match: re.Match[str]) -> str:
        path = match.group(1).split(".")
        if path == ["sample", "output_text"]:
            return output_text
        if path[0] != "item" or len(path) < 2:
            raise GradingError(f"{match.group(0)} is not a template this grader knows: use "
                               "{{ sample.output_text }} or {{ item.<field> }}")
        node: Any = item
        for key in path[1:]:
            if not isinstance(node, dict) or key not in node:
                raise GradingError(f"{match.group(0)}: the eval line has no field {'.'.join(path[1:])!r}")
            node = node[key]
        return node if isinstance(node, str) else json.dumps(node, ensure_ascii=False)

    return _PLACEHOLDER.sub(value, template)


def string_check(g: StringCheckGrader, item: dict[str, Any], output_text: str) -> Grade:
    text, ref = render(g.input, item, output_text), render(g.reference, item, output_text)
    ok = {"eq": text == ref, "ne": text != ref, "like": ref in text,
          "ilike": ref.casefold() in text.casefold()}[g.operation]
    return Grade(1.0 if ok else 0.0, ok)


def text_similarity(g: TextSimilarityGrader, item: dict[str, Any], output_text: str) -> Grade:
    text, ref = render(g.input, item, output_text), render(g.reference, item, output_text)
    metric = g.evaluation_metric
    if metric == "fuzzy_match":
        score = difflib.SequenceMatcher(None, text, ref, autojunk=False).ratio()
    elif metric == "bleu":
        score = bleu(_words(text), _words(ref))
    elif metric == "rouge_l":
        score = _f1(_lcs(_words(text), _words(ref)), len(_words(text)), len(_words(ref)))
    else:
        n = int(metric[-1])
        got, want = _ngrams(_words(text), n), _ngrams(_words(ref), n)
        score = _f1(sum((got & want).values()), sum(got.values()), sum(want.values()))
    return Grade(score, score >= g.pass_threshold)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _f1(overlap: int, got: int, want: int) -> float:
    if not overlap or not got or not want:
        return 0.0
    precision, recall = overlap / got, overlap / want
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def bleu(candidate: list[str], reference: list[str], max_n: int = 4) -> float:
    """Sentence BLEU: the geometric mean of 1- to 4-gram precisions, add-one smoothed above unigrams (Lin and
    Och's smoothing, as sentence-level BLEU needs), times the brevity penalty."""
    if not candidate or not reference:
        return 0.0
    logs = 0.0
    for n in range(1, max_n + 1):
        got, want = _ngrams(candidate, n), _ngrams(reference, n)
        matches, total = sum((got & want).values()), max(sum(got.values()), 0)
        if n == 1:
            if not matches:
                return 0.0
            logs += math.log(matches / total)
        else:
            logs += math.log((matches + 1) / (total + 1))
    brevity = 1.0 if len(candidate) > len(reference) else math.exp(1 - len(reference) / len(candidate))
    return brevity * math.exp(logs / max_n)


# ---- score_model -------------------------------------------------------------------------------

Post = Callable[[str, dict[str, Any], dict[str, str], float], dict[str, Any]]


def post_json(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the configured judge
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise GradingError(f"the judge endpoint {url} answered HTTP {exc.code}: "
                           f"{exc.read(300).decode(errors='replace')}") from None
    except (OSError, ValueError) as exc:
        raise GradingError(f"the judge endpoint {url} failed: {exc}") from None


def ask_judge(judge: JudgeEndpoint, model: str, messages: list[dict[str, str]], max_tokens: int = 256,
              post: Post = post_json) -> str:
    """The judge's reply text to ``messages`` (greedy)."""
    headers = {}
    if judge.api_key_file:
        with open(judge.api_key_file, encoding="utf-8") as fp:
            headers["Authorization"] = f"Bearer {fp.read().strip()}"
    url = judge.url.rstrip("/") + "/chat/completions"
    answer = post(url, {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens},
                  headers, judge.timeout_seconds)
    try:
        return str(answer["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        raise GradingError(f"the judge endpoint {url} answered without choices[0].message.content") from None


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_score(reply: str) -> float:
    """The judge's score: ``{"result": n}`` (OpenAI's score_model output) or ``{"score": n}`` anywhere in the
    reply, else the first number in it."""
    for match in re.finditer(r"\{[^{}]*\}", reply):
        try:
            data = json.loads(match.group(0))
        except ValueError:
            continue
        for key in ("result", "score"):
            if isinstance(data.get(key), (int, float)) and not isinstance(data.get(key), bool):
                return float(data[key])
    found = _NUMBER.search(reply)
    if found is None:
        raise GradingError(f"the judge's reply holds no score: {reply[:120]!r}")
    return float(found.group(0))


def score_model(g: ScoreModelGrader, item: dict[str, Any], output_text: str, judge: JudgeEndpoint,
                post: Post = post_json) -> Grade:
    messages = [{"role": m.role, "content": render(m.content, item, output_text)} for m in g.input]
    score = parse_score(ask_judge(judge, g.model, messages, post=post))
    low, high = g.range
    if not low <= score <= high:
        raise GradingError(f"the judge's score {score} is outside the grader's range {list(g.range)}")
    return Grade(score, score >= g.pass_threshold)


def grade(g: Any, item: dict[str, Any], output_text: str, judge: JudgeEndpoint | None,
          post: Post = post_json) -> Grade:
    if isinstance(g, StringCheckGrader):
        return string_check(g, item, output_text)
    if isinstance(g, TextSimilarityGrader):
        return text_similarity(g, item, output_text)
    assert judge is not None, "EvaluationConfig refuses a score_model grader without a judge"
    return score_model(g, item, output_text, judge, post)
