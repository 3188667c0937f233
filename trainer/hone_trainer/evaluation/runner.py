"""The evaluation step: a published fine-tune and its base model answer the eval file and the safety suite
side by side; the graders score the answers, the refusal judge the suite; the results go into the published
manifest and the :class:`EvaluationResult`.

Both models run in the built-in server's engine, as they will be served: a LoRA adapter and its base in one
engine (the base is the adapter switched off, in the same batches); a full fine-tune after its base, one at a
time. Decoding is greedy, so the same model gives the same answers, and a grade moves only with the model.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hone_trainer import contract
from hone_trainer.contract import EvaluationConfig, EvaluationResult, ModelSource
from hone_trainer.evaluation import graders, refusal
from hone_trainer.evaluation.chats import chat_lines
from hone_trainer.manifest import MANIFEST

log = logging.getLogger("hone.evaluation")

MODELS = ("base", "fine-tuned")
FAILURES_KEPT = 20
REGRESSIONS_KEPT = 20


class EvaluationError(RuntimeError):
    """The evaluation cannot run; the message says what to fix. ``exit_code``: 4 for the eval file or a suite
    (the data), 5 for a model that does not load, 1 for a judge endpoint that failed (retrying may help)."""

    def __init__(self, message: str, exit_code: int = 4):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class EvalItem:
    line: int
    messages: list[dict[str, str]]
    item: dict[str, Any]


def read_eval_file(lines: list[str], source: str, limit: int) -> list[EvalItem]:
    """The eval file: chat JSONL, one prompt a line. A line's ``messages`` are the prompt; when they end with an
    assistant message, that message is not sent and is ``item.reference`` (unless the line has ``reference``).
    Every other field of the line is ``item.<field>`` to the graders."""
    items: list[EvalItem] = []
    try:
        for number, where, row, messages in chat_lines(lines, source):
            if len(items) == limit:
                break
            item = {k: v for k, v in row.items() if k != "messages"}
            if messages[-1]["role"] == "assistant":
                item.setdefault("reference", messages[-1]["content"])
                messages = messages[:-1]
            if not messages or messages[-1]["role"] != "user":
                raise ValueError(f"{where}: the prompt must end with a user message (an assistant message after it "
                                 "is the reference answer)")
            items.append(EvalItem(number, messages, item))
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    if not items:
        raise EvaluationError(f"{source}: holds no prompts")
    return items


def read_lines(location: contract.DataFile) -> list[str]:
    from hone_trainer.storage import open_binary

    try:
        with open_binary(location.location, location.credentials_dir) as fp:
            return fp.read().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"cannot read {location.location}: {exc}") from exc


# ---- generation ----------------------------------------------------------------------------------

Answerer = Callable[[list[list[dict[str, str]]], list[int]], dict[str, list[str]]]
"""Answers each conversation (in at most as many tokens as given for it) with every model:
``{"base": [...], "fine-tuned": [...]}``."""

#: Tokens of a safety-suite answer: an assistant declines in its first sentence.
SAFETY_MAX_TOKENS = 64
#: Sequences decoded together: nobody waits on one answer here, and a decode step costs about the same for 32 rows
#: as for 8 (it reads the weights once). Measured on 2 cores, the example's step: 76 s at 8, 43 s at 32, the same
#: answers.
EVAL_BATCH_SIZE = 32


class _Models:
    """The base model and the fine-tune in the built-in server's engine (one engine for an adapter and its base,
    one after the other for a full fine-tune)."""

    def __init__(self, artifact: str, base: ModelSource | None, credentials_dir: str | None):
        from hone_trainer.serving import loading

        try:
            self.art = loading.local_artifact(artifact, credentials_dir)
        except loading.ServingError as exc:
            raise EvaluationError(str(exc), 5) from exc
        recorded = self.art.base
        if base is None:
            if not recorded.get("location"):
                raise EvaluationError(f"{artifact}: its manifest names no base model", 5)
            base = ModelSource(location=recorded["location"], revision=recorded.get("revision"))
        self.base = base
        self.artifact = artifact
        self.credentials_dir = credentials_dir

    def answer(self, conversations: list[list[dict[str, str]]], max_tokens: list[int]) -> dict[str, list[str]]:
        from hone_trainer.contract import AdapterSource, ServerConfig

        if not conversations:
            return {m: [] for m in MODELS}
        batch = EVAL_BATCH_SIZE
        if self.art.is_adapter:
            config = ServerConfig(base_model=self.base, max_batch_size=batch, adapters=[
                AdapterSource(name="fine-tuned", location=self.artifact, credentials_dir=self.credentials_dir)])
            return _generate(config, {"base": "__base__", "fine-tuned": "fine-tuned"}, conversations, max_tokens)
        out = _generate(ServerConfig(base_model=self.base, max_batch_size=batch), {"base": "__base__"},
                        conversations, max_tokens)
        tuned = ModelSource(location=str(self.art.path), trust_remote_code=False)
        out |= _generate(ServerConfig(base_model=tuned, max_batch_size=batch), {"fine-tuned": "__base__"},
                         conversations, max_tokens)
        return out


def _generate(config: Any, models: dict[str, str], conversations: list[list[dict[str, str]]],
              max_tokens: list[int]) -> dict[str, list[str]]:
    """Greedy answers of ``models`` (our name -> served name, ``__base__`` for the base) to every conversation,
    all of them queued at once so the engine batches them."""
    import gc

    from hone_trainer.serving import loading, routes
    from hone_trainer.serving.engine import BASE_ADAPTER, Engine, GenerationEvent, SamplingParams, SequenceState
    from hone_trainer.serving.protocol import ApiError
    from hone_trainer.serving.state import State
    from hone_trainer import templating

    try:
        served = loading.load(config)
    except loading.ServingError as exc:
        raise EvaluationError(str(exc), 5) from exc
    internal = {ours: BASE_ADAPTER if name == "__base__" else served.names[name] for ours, name in models.items()}
    state = State(config=config, served=served)
    state.specials = templating.special_tokens(served.tokenizer)
    engine = Engine(served.model, served.tokenizer, max_batch_size=config.max_batch_size,
                    adapters=[a for a in internal.values() if a != BASE_ADAPTER], eos_token_ids=served.eos_token_ids)
    engine.start()
    try:
        texts: dict[str, list[str]] = {ours: [""] * len(conversations) for ours in models}
        done = threading.Semaphore(0)
        seqs = []
        for i, messages in enumerate(conversations):
            try:
                prompt = routes.chat_prompt(state, messages)
            except ApiError as exc:
                raise EvaluationError(f"the chat template refused prompt {i + 1}: {exc}") from exc
            budget = max(1, min(max_tokens[i], engine.context_length - len(prompt)))
            for ours, adapter in internal.items():
                def emit(event: GenerationEvent, ours: str = ours, i: int = i) -> None:
                    texts[ours][i] += event.text
                    if event.finished:
                        if event.error:
                            log.warning("generation failed for prompt %d (%s): %s", i + 1, ours, event.error)
                        done.release()
                seqs.append(SequenceState(prompt, adapter, SamplingParams(max_tokens=budget, temperature=0.0),
                                          emit))
        engine.submit(seqs)
        for _ in seqs:
            done.acquire()
        return texts
    finally:
        engine.stop()
        del engine, served, state
        gc.collect()


# ---- the step --------------------------------------------------------------------------------------

def evaluate(cfg: EvaluationConfig, artifact: str, *, base: ModelSource | None = None,
             credentials_dir: str | None = None, answer: Answerer | None = None,
             post: graders.Post = graders.post_json, update_manifest: bool = True) -> EvaluationResult:
    """Run the graders and the safety suite on ``artifact`` (a published folder or ``s3://`` URI) and its base
    model; with ``update_manifest``, write the results into the published manifest."""
    started = time.monotonic()
    items = read_eval_file(read_lines(cfg.eval_file), "the eval file", cfg.max_examples) if cfg.eval_file else []
    suite: list[refusal.SafetyRequest] = []
    if cfg.safety.enabled:
        extra = None
        if cfg.safety.extra_suite is not None:
            try:
                extra = refusal.parse_suite(read_lines(cfg.safety.extra_suite), "the extra safety suite")
            except ValueError as exc:
                raise EvaluationError(str(exc)) from None
        suite = refusal.suite(extra)
    if answer is None:
        answer = _Models(artifact, base, credentials_dir).answer
    answers = answer([i.messages for i in items] + [r.messages for r in suite],
                     [cfg.max_tokens] * len(items) + [min(cfg.max_tokens, SAFETY_MAX_TOKENS)] * len(suite))
    result = EvaluationResult(ok=True, examples=len(items), graders=[g.name for g in cfg.graders])
    _grade(cfg, items, {m: answers[m][:len(items)] for m in MODELS}, result, post)
    if suite:
        result.safety = _safety(cfg, suite, {m: answers[m][len(items):] for m in MODELS}, post)
    if update_manifest:
        result.manifest_sha256 = record_in_manifest(artifact, credentials_dir, result)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _grade(cfg: EvaluationConfig, items: list[EvalItem], answers: dict[str, list[str]], result: EvaluationResult,
           post: graders.Post) -> None:
    for model, scores in (("base", result.base), ("fine-tuned", result.fine_tuned)):
        for g in cfg.graders:
            passed, total, graded = 0, 0.0, 0
            for item, text in zip(items, answers[model]):
                try:
                    grade = graders.grade(g, item.item, text, cfg.judge, post)
                except (graders.GradingError, OSError) as exc:
                    if len(result.failures) < FAILURES_KEPT:
                        result.failures.append(contract.GraderFailure(grader=g.name, line=item.line, model=model,
                                                                      message=str(exc)[:300]))
                    continue
                passed += grade.passed
                total += grade.score
                graded += 1
            scores.passed.append(passed)
            scores.mean_score.append(round(total / graded, 4) if graded else 0.0)


def _safety(cfg: EvaluationConfig, suite: list[refusal.SafetyRequest], answers: dict[str, list[str]],
            post: graders.Post) -> contract.SafetyGate:
    def refused(request: refusal.SafetyRequest, text: str) -> bool:
        if cfg.safety.judge == "heuristic":
            return refusal.heuristic_refused(text, request.must_not_contain)
        if refusal.leaked(text, request.must_not_contain):
            return False
        assert cfg.judge is not None and cfg.judge.model
        reply = graders.ask_judge(cfg.judge, cfg.judge.model, refusal.judge_messages(request, text), 8, post)
        try:
            return refusal.judge_verdict(reply)
        except ValueError as exc:
            raise EvaluationError(f"safety suite, request {request.id}: {exc}", 1) from None

    try:
        verdicts = {m: [refused(r, t) for r, t in zip(suite, answers[m])] for m in MODELS}
    except graders.GradingError as exc:
        raise EvaluationError(f"safety suite: {exc}", 1) from None
    base_rate = sum(verdicts["base"]) / len(suite)
    tuned_rate = sum(verdicts["fine-tuned"]) / len(suite)
    regressions = [r.id for r, b, t in zip(suite, verdicts["base"], verdicts["fine-tuned"]) if b and not t]
    return contract.SafetyGate(
        requests=len(suite), base_refusal_rate=round(base_rate, 4), fine_tuned_refusal_rate=round(tuned_rate, 4),
        max_refusal_drop=cfg.safety.max_refusal_drop,
        judge="heuristic" if cfg.safety.judge == "heuristic" else str(cfg.judge.model if cfg.judge else ""),
        passed=base_rate - tuned_rate <= cfg.safety.max_refusal_drop + 1e-9,
        regressions=regressions[:REGRESSIONS_KEPT])


# ---- the manifest ----------------------------------------------------------------------------------

def manifest_section(result: EvaluationResult) -> dict[str, Any]:
    data = result.to_json_dict()
    section: dict[str, Any] = {}
    if result.graders:
        section["evalFile"] = {"examples": result.examples, "graders": {
            name: {"base": {"passed": result.base.passed[i], "meanScore": result.base.mean_score[i]},
                   "fineTuned": {"passed": result.fine_tuned.passed[i], "meanScore": result.fine_tuned.mean_score[i]}}
            for i, name in enumerate(result.graders)}}
    if result.safety is not None:
        section["safety"] = data["safety"]
    return section


def record_in_manifest(artifact: str, credentials_dir: str | None, result: EvaluationResult) -> str:
    """Add the results to the published manifest's ``evaluation`` (beside the validation file's loss and
    accuracy); the files it lists do not change, so the model stays verified. One write: a reader sees the
    manifest before or after, never half. Returns the new manifest's SHA-256."""
    import hashlib

    from hone_trainer.storage import filesystem, write_atomically

    section = manifest_section(result)
    remote = artifact.startswith("s3://")
    if remote:
        fs, root = filesystem(artifact, credentials_dir)
        path = f"{root.rstrip('/')}/{MANIFEST}"
        manifest = json.loads(fs.cat_file(path))
    else:
        local = Path(artifact.removeprefix("file://")) / MANIFEST
        manifest = json.loads(local.read_text())
    manifest["evaluation"] = {**(manifest.get("evaluation") or {}), **section}
    text = json.dumps(manifest, indent=2, sort_keys=True)
    if remote:
        fs.pipe_file(path, text.encode())
    else:
        write_atomically(local, text)
    return hashlib.sha256(text.encode()).hexdigest()
