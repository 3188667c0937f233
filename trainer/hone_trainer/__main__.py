"""``python -m hone_trainer``: what the pods the operator creates run.

    python -m hone_trainer validate --config CONFIG --result RESULT
    torchrun ... -m hone_trainer train --config CONFIG

Exit codes are :class:`hone_trainer.contract.ExitCode`; the operator fails a
Job at once on the non-retryable ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from hone_trainer import contract
from hone_trainer.contract import ExitCode, TrainerConfig
from hone_trainer.storage import write_atomically

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
    write_atomically(target, text)


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


def cmd_train(args: argparse.Namespace) -> int:
    from hone_trainer import ds_config, models
    from hone_trainer.chat import TemplateError
    from hone_trainer.publish import PublishError
    from hone_trainer.train import DataError, Preempted, Trainer

    config = load_config(args.config)
    trainer = Trainer(config)
    code, result = ExitCode.OK, None
    try:
        trainer.setup()
        result = trainer.train()
    except Preempted as exc:
        print(f"hone-trainer: {exc}", file=sys.stderr)
        code = 143  # 128 + SIGTERM: the pod was asked to go; the next one resumes
    except ds_config.DeepSpeedConfigError as exc:
        code, result = ExitCode.CONFIG_ERROR, contract.TrainingResult(ok=False, error_code="invalid_config",
                                                                       message=str(exc))
    except DataError as exc:
        code, result = ExitCode.DATA_ERROR, contract.TrainingResult(ok=False, error_code="invalid_training_file",
                                                                     message=str(exc))
    except (models.ModelError, TemplateError) as exc:
        code, result = ExitCode.MODEL_ERROR, contract.TrainingResult(ok=False, error_code="model_error",
                                                                      message=str(exc))
    except PublishError as exc:  # e.g. the object store is unreachable: the retry resumes at the end
        code = ExitCode.RETRYABLE
        print(f"hone-trainer: publishing failed: {exc}", file=sys.stderr)
    finally:
        rank0 = os.environ.get("RANK", "0") == "0"
        if rank0 and result is not None:
            write_result(config.result_path, result)
        if result is not None and not result.ok:
            print(f"hone-trainer: error: {result.message}", file=sys.stderr)
        trainer.close()
    if code == ExitCode.OK and rank0 and result is not None:
        print(json.dumps({"event": "published", **result.to_json_dict()}), flush=True)
    return int(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hone_trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check training data and count tokens with the model's tokenizer")
    v.add_argument("--config", required=True, help="TrainerConfig JSON file")
    v.add_argument("--result", help="where to write the ValidationResult JSON (default: the config's resultPath)")
    v.set_defaults(func=cmd_validate)
    t = sub.add_parser("train", help="fine-tune with DeepSpeed (under torchrun, or as one process)")
    t.add_argument("--config", required=True, help="TrainerConfig JSON file")
    t.set_defaults(func=cmd_train)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
