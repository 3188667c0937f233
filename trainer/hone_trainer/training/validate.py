"""The ValidatingFiles step: check the data and count its tokens as training will.

``python -m hone_trainer validate --config CONFIG --result RESULT`` writes a
:class:`~hone_trainer.contract.ValidationResult` and exits 0 when the data is
trainable, :attr:`~hone_trainer.contract.ExitCode.DATA_ERROR` when it is not.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass, field
from typing import Any

from hone_trainer import contract, templating
from hone_trainer.training import packing
from hone_trainer.training.formatting import ChatFormatter
from hone_trainer.contract import ProblemKind, ScreeningResult, TrainerConfig, ValidationResult
from hone_trainer.training import screening
from hone_trainer.training.data import MIN_EXAMPLES, RECOMMENDED_EXAMPLES, Example, FileKind, ReadResult, read_jsonl
from hone_trainer.storage import open_binary

BATCH = 1000


def read_file(location: contract.DataFile, kind: FileKind) -> ReadResult:
    try:
        with open_binary(location.location, location.credentials_dir) as fp:
            return read_jsonl(fp, kind)
    except OSError as exc:
        result = ReadResult(file=kind)
        result.problem(ProblemKind.UNREADABLE_FILE, f"cannot read {location.location}: {exc}")
        return result


@dataclass
class Counts:
    examples: int = 0
    tokens: int = 0
    trained: int = 0
    longest: int = 0
    over_length: int = 0
    #: Truncated examples kept (overLength truncate) with no trained token left: not trained, not billed.
    untrained: int = 0
    #: Token length of each example training keeps, in file order (the trainer's indices).
    lengths: list[int] = field(default_factory=list)


#: Files with at least this many examples are counted by several processes.
PARALLEL_MIN_EXAMPLES = 4000
_SHARED: tuple[ChatFormatter, list[Example]] | None = None  # handed to forked workers


def _counts_of(formatter: ChatFormatter, examples: list[Example]) -> list[tuple[int, int, bool, int]]:
    return [(len(e.input_ids), e.trained_tokens, e.truncated, e.full_length) for e in formatter.encode(examples)]


def _count_chunk(bounds: tuple[int, int]) -> list[tuple[int, int, bool, int]]:
    """In a forked worker: count one chunk of the examples the parent shared."""
    assert _SHARED is not None
    formatter, examples = _SHARED
    return _counts_of(formatter, examples[bounds[0]:bounds[1]])


def count(formatter: ChatFormatter, read: ReadResult, drop_over_length: bool, workers: int | None = None) -> Counts:
    """Token counts of a file, exactly as training will tokenize it.

    Large files are split over forked worker processes (they inherit the
    formatter and the examples, and send back four numbers per example).
    """
    global _SHARED
    n = len(read.examples)
    chunks = [(i, min(i + BATCH, n)) for i in range(0, n, BATCH)]
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers > 1 and n >= PARALLEL_MIN_EXAMPLES and "fork" in multiprocessing.get_all_start_methods():
        _SHARED = (formatter, read.examples)
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                parts = pool.map(_count_chunk, chunks)
        finally:
            _SHARED = None
    else:
        parts = [_counts_of(formatter, read.examples[a:b]) for a, b in chunks]
    counts = Counts()
    for length, trained, truncated, full in (item for part in parts for item in part):
        counts.longest = max(counts.longest, full)
        if truncated:
            counts.over_length += 1
            if drop_over_length:
                continue
        if not trained:  # truncation cut all of its assistant tokens: the trainer leaves it out, so do we
            counts.untrained += 1
            continue
        counts.examples += 1
        counts.tokens += length
        counts.trained += trained
        counts.lengths.append(length)
    return counts


def largest_steps(lengths: list[int], batch_size: int, epochs: int, seed: int,
                  row_length: int) -> tuple[int, int, int]:
    """The most rows any optimizer step of the run packs, the longest row, and the most tokens a step puts
    through the model padded (its rows times its longest): the trainer's own order of examples and packing, on
    lengths alone. A rank's micro-batch is some of a step's rows padded to the longest, which is what the memory
    estimate needs."""
    n = len(lengths)
    most_rows = longest = padded = 0
    for step in range(packing.steps_per_epoch(n, batch_size) * epochs if n else 0):
        bins = packing.row_bins({i: lengths[i] for i in packing.step_examples(n, batch_size, seed, step)},
                                row_length)
        row = max(sum(lengths[i] for i in b) for b in bins)
        most_rows, longest, padded = max(most_rows, len(bins)), max(longest, row), max(padded, len(bins) * row)
    return most_rows, longest, padded


def _repeats(train: ReadResult, val: ReadResult | None, warnings: list[str]) -> tuple[int, int]:
    """Duplicate training examples, and validation examples that also occur in training."""
    seen: dict[str, int] = {}
    duplicates = 0
    for ex in train.examples:
        fp = ex.fingerprint
        if fp in seen:
            duplicates += 1
            if duplicates <= 3:
                warnings.append(f"training file line {ex.line} repeats line {seen[fp]}")
        else:
            seen[fp] = ex.line
    overlap = sum(1 for ex in (val.examples if val else []) if ex.fingerprint in seen)
    if overlap:
        warnings.append(f"{overlap} validation example(s) also occur in the training file; "
                        "the validation loss will look better than it is")
    return duplicates, overlap


def _special_tokens(formatter: ChatFormatter, read: ReadResult, warnings: list[str]) -> None:
    """Content that holds a special token's text (``<|im_end|>``...): trained as the plain text it is, with
    a warning, since as tokens it would forge turns of the chat template; a problem (and the example left
    out) where the template does not keep the content verbatim, so it cannot be kept apart."""
    specials = templating.special_tokens(formatter.tokenizer)
    lines: list[str] = []
    keep = []
    for ex in read.examples:
        found = next((f"message {i} holds {s!r}" for i, m in enumerate(ex.messages)
                      if (s := templating.special_in(m.content, specials))), None)
        if found is None:
            keep.append(ex)
            continue
        text, _ = formatter.text_and_spans(ex)
        if formatter.literal_spans(ex, text) is None:
            read.problem(ProblemKind.SPECIAL_TOKEN_IN_CONTENT,
                         f"{found}, a special token's text, and this model's chat template does not keep message "
                         "content verbatim, so it cannot be trained as plain text: remove it", ex.line)
            read.invalid_lines += 1
            continue
        keep.append(ex)
        lines.append(f"line {ex.line} ({found})")
    read.examples = keep
    if lines:
        warnings.append(f"{read.file} file: {len(lines)} example(s) hold the text of a special token of the "
                        f"tokenizer, e.g. {'; '.join(lines[:3])}: it is trained as plain text, as the server "
                        "reads it, not as the token (which would forge a turn of the chat template)")


def _evaluation_files(config: TrainerConfig) -> contract.Problem | None:
    """The first problem of the evaluation step's files (the eval file, the extra safety suite), read as that
    step reads them."""
    from hone_trainer.evaluation import refusal, runner

    ev = config.evaluation
    if ev is None:
        return None
    try:
        if ev.eval_file is not None:
            runner.read_eval_file(runner.read_lines(ev.eval_file), "the eval file", ev.max_examples)
        if ev.safety.enabled and ev.safety.extra_suite is not None:
            refusal.suite(refusal.parse_suite(runner.read_lines(ev.safety.extra_suite), "the extra safety suite"))
    except (runner.EvaluationError, ValueError) as exc:
        return contract.Problem(file="evaluation", kind=ProblemKind.INVALID_EVAL_FILE,
                                message=f"{exc}; fix it in spec.evaluation before anything trains")
    return None


def validate(config: TrainerConfig, tokenizer: Any, shape: contract.ModelShape | None = None) -> ValidationResult:
    """Check the files and count tokens with ``tokenizer`` (the base model's own); ``shape`` (the base model's,
    when it could be read) goes into the result for the memory estimate."""
    train = read_file(config.training_data, "training")
    val = read_file(config.validation_data, "validation") if config.validation_data else None
    reads = [r for r in (train, val) if r is not None]
    screened = ScreeningResult()
    for r in reads:  # before counting: the counts describe what trains (redacted, when it is)
        screening.screen(r, config.screening, screened)
        screening.moderate(r, config.screening, screened)

    n_train = len(train.examples)
    if 0 < n_train < MIN_EXAMPLES:
        train.problem(ProblemKind.TOO_FEW_EXAMPLES,
                      f"{n_train} valid example(s); fine-tuning needs at least {MIN_EXAMPLES}")

    warnings = [f"{r.file} file: {r.blank_lines} blank line(s) skipped" for r in reads if r.blank_lines]
    if MIN_EXAMPLES <= n_train < RECOMMENDED_EXAMPLES:
        warnings.insert(0, f"{n_train} examples: at least {RECOMMENDED_EXAMPLES} usually give clearly better results")

    duplicates, overlap = _repeats(train, val, warnings)

    drop = config.over_length == "drop"
    formatter = ChatFormatter(tokenizer, config.max_seq_length)
    for r in reads:
        _special_tokens(formatter, r, warnings)
    train_counts = count(formatter, train, drop)
    val_counts = count(formatter, val, drop) if val else Counts()
    if train_counts.over_length:
        action = "dropped" if drop else f"truncated to {config.max_seq_length} tokens"
        warnings.append(f"{train_counts.over_length} training example(s) are longer than maxSeqLength="
                        f"{config.max_seq_length} (longest {train_counts.longest}) and will be {action}")
    if n_train and drop and train_counts.examples == 0:
        train.problem(ProblemKind.TOO_FEW_EXAMPLES,
                      f"every example is longer than maxSeqLength={config.max_seq_length} and dropped")
    if train_counts.untrained:
        warnings.append(f"{train_counts.untrained} training example(s) lose every assistant token to truncation "
                        f"at maxSeqLength={config.max_seq_length}: they are left out (not trained, not billed)")
    if n_train and not train_counts.examples and train_counts.untrained:
        train.problem(ProblemKind.TOO_FEW_EXAMPLES, "no example keeps an assistant token after truncation at "
                      f"maxSeqLength={config.max_seq_length}: raise spec.hyperparameters.maxSeqLength")

    if screened.lines:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(screened.counts.items()))
        done = {"report": "reported only", "redact": "redacted before counting and training"}
        actions = sorted({done[f.action] for f in screened.findings if f.action in done})
        if actions:
            warnings.append(f"data screening: {screened.lines} line(s) hold personal data, blocklisted terms or "
                            "flagged content "
                            f"({counts}); {' and '.join(actions)} (status.dataset.screening lists the lines)")
    problem_counts: dict[str, int] = {}
    for r in reads:
        for k, v in r.problem_counts.items():
            problem_counts[k] = problem_counts.get(k, 0) + v
    problems = [p for r in reads for p in r.problems]
    evaluation = _evaluation_files(config)
    if evaluation is not None:  # found now, not after hours of training
        problems.append(evaluation)
        problem_counts[evaluation.kind.value] = 1
    ok = not problem_counts and train_counts.examples > 0 and train_counts.trained > 0

    hp = contract.resolve_hyperparameters(train_counts.examples, config.epochs, config.batch_size,
                                          config.learning_rate_multiplier)
    billable = train_counts.tokens * hp.epochs
    steps = largest_steps(train_counts.lengths, hp.batch_size, hp.epochs, config.seed,
                          packing.row_length(config.max_seq_length, config.pack_length))
    return ValidationResult(
        ok=ok,
        examples=train_counts.examples,
        validation_examples=val_counts.examples,
        invalid_lines=sum(r.invalid_lines for r in reads),
        tokens_per_epoch=train_counts.tokens,
        trained_tokens_per_epoch=train_counts.trained,
        validation_tokens=val_counts.tokens,
        max_example_tokens=train_counts.longest,
        over_length_examples=train_counts.over_length,
        over_length_action=config.over_length,
        duplicate_examples=duplicates,
        validation_overlap=overlap,
        problem_counts=problem_counts,
        problems=problems,
        warnings=warnings,
        hyperparameters=hp,
        billable_training_tokens=billable,
        estimated_cost_usd=contract.cost_usd(billable, config.prices.training),
        max_step_rows=steps[0], max_row_tokens=steps[1], max_step_tokens=steps[2],
        model=shape,
        screening=screened if screened.lines else None,
    )
