"""``python -m hone_trainer``: what the pods the operator creates run.

    python -m hone_trainer validate --config CONFIG --result RESULT

Exit codes are :class:`hone_trainer.contract.ExitCode`; the operator fails a
Job at once on the non-retryable ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from hone_trainer import contract
from hone_trainer.contract import ExitCode, TrainerConfig

log = logging.getLogger("hone.trainer")


def load_config(path: str) -> TrainerConfig:
    try:
        return TrainerConfig.model_validate_json(Path(path).read_text())
    except OSError as exc:
        raise SystemExit(_fail(ExitCode.CONFIG_ERROR, f"cannot read the trainer config {path}: {exc}"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SystemExit(_fail(ExitCode.CONFIG_ERROR, f"trainer config {path}: {where}: {first['msg']}"))


def _fail(code: ExitCode, message: str) -> int:
    print(f"hone-trainer: error: {message}", file=sys.stderr)
    return int(code)


def write_result(path: str | None, result: contract.ValidationResult | contract.TrainingResult) -> None:
    if not path:
        return
    text = contract.to_termination_message(result)
    target = Path(path)
    if str(target) == contract.RESULT_PATH_IN_POD:
        target.write_text(text)  # the kubelet reads this file; it cannot be replaced
        return
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    tmp.replace(target)


def cmd_validate(args: argparse.Namespace) -> int:
    from hone_trainer import models
    from hone_trainer.chat import TemplateError
    from hone_trainer.validate import validate

    config = load_config(args.config)
    try:
        model = models.resolve(config.base_model)
        tokenizer = models.load_tokenizer(model, trust_remote_code=config.base_model.trust_remote_code)
        result = validate(config, tokenizer)
    except (models.ModelError, TemplateError) as exc:
        return _fail(ExitCode.MODEL_ERROR, str(exc))
    write_result(args.result or config.result_path, result)
    summary = {"ok": result.ok, "examples": result.examples, "tokensPerEpoch": result.tokens_per_epoch,
               "billableTrainingTokens": result.billable_training_tokens, "problems": result.problem_counts}
    print(json.dumps(summary), flush=True)
    if not result.ok:
        print(f"hone-trainer: the data is not trainable: {result.summary}", file=sys.stderr)
        return int(ExitCode.DATA_ERROR)
    return int(ExitCode.OK)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hone_trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check training data and count tokens with the model's tokenizer")
    v.add_argument("--config", required=True, help="TrainerConfig JSON file")
    v.add_argument("--result", help="where to write the ValidationResult JSON (default: the config's resultPath)")
    v.set_defaults(func=cmd_validate)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
