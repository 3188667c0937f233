"""``python -m hone_trainer``: what the pods the operator creates run.

    python -m hone_trainer validate --config CONFIG --result RESULT
    torchrun ... -m hone_trainer train --config CONFIG
    python -m hone_trainer launch --config CONFIG -- torchrun ... -m hone_trainer train --config CONFIG
    python -m hone_trainer serve --config SERVER_CONFIG   (or --model/--adapter ...)
    python -m hone_trainer fetch --config SERVER_CONFIG --target DIR
    python -m hone_trainer evaluate --config CONFIG --result RESULT

Exit codes are :class:`hone_trainer.contract.ExitCode`; the operator fails a
Job at once on the non-retryable ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
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


def write_result(path: str | None, result: contract.ValidationResult | contract.TrainingResult
                 | contract.EvaluationResult) -> None:
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
    from hone_trainer.training.formatting import TemplateError
    from hone_trainer.training.validate import validate

    config = load_config(args.config)
    try:
        model = models.resolve(config.base_model)
        tokenizer = models.load_tokenizer(model, trust_remote_code=config.base_model.trust_remote_code)
        result = validate(config, tokenizer, models.shape_or_none(model, config.base_model.trust_remote_code))
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


def _training_error(error_code: str, exc: Exception) -> tuple[ExitCode, contract.TrainingResult]:
    """A failed run's result, and the exit code :data:`contract.EXIT_CODE_OF_ERROR` gives its error."""
    return contract.EXIT_CODE_OF_ERROR[error_code], contract.TrainingResult(ok=False, error_code=error_code,
                                                                             message=str(exc))


def cmd_train(args: argparse.Namespace) -> int:
    from hone_trainer import models
    from hone_trainer.training import ds_config
    from hone_trainer.training.formatting import TemplateError
    from hone_trainer.manifest import PublishError
    from hone_trainer.training.checkpoints import UnsafeCheckpoint
    from hone_trainer.training.report import ReportingForbidden
    from hone_trainer.training.trainer import DataError, Preempted, Trainer, UnresolvedConfig

    config = load_config(args.config)
    trainer = Trainer(config)
    code, result = ExitCode.OK, None
    try:
        trainer.setup()
        result = trainer.train()
    except Preempted as exc:
        print(f"hone-trainer: {exc}", file=sys.stderr)
        code = 143  # 128 + SIGTERM: the pod was asked to go; the next one resumes
    except (ds_config.DeepSpeedConfigError, UnresolvedConfig) as exc:
        code, result = _training_error("invalid_config", exc)
    except ReportingForbidden as exc:
        code, result = _training_error("permission_denied", exc)
    except DataError as exc:
        code, result = _training_error("invalid_training_file", exc)
    except (models.ModelError, TemplateError) as exc:
        code, result = _training_error("model_error", exc)
    except UnsafeCheckpoint as exc:  # loading it would run code: a retry would meet it again
        code, result = _training_error("unsafe_checkpoint", exc)
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


def _wait_for_rendezvous(command: list[str], timeout: float | None = None) -> None:
    """Before torchrun starts on a node of a multi-node run: wait until the first node's stable name
    (``--master-addr``) resolves, and on every other node until its store accepts connections.

    The first node hosts the store (a static rendezvous: node rank = Job index) and connects to it by
    that name too, which resolves only once the headless Service lists its pod. The Job replaces a failed
    pod on its own, so after a node is lost a replacement may start before the first node's new pod serves
    the store; torchrun would then fail at once and spend the Job's backoffLimit. Waits at most
    ``timeout`` seconds (``HONE_RENDEZVOUS_WAIT_SECONDS``, default 600), then lets torchrun try anyway.
    """
    import socket
    import time

    def option(name: str) -> str | None:
        return next((a.split("=", 1)[1] for a in command if a.startswith(f"--{name}=")), None)

    host, port = option("master-addr"), option("master-port")
    if host is None or port is None:
        return
    first = os.environ.get("JOB_COMPLETION_INDEX", "0") == "0"
    timeout = float(os.environ.get("HONE_RENDEZVOUS_WAIT_SECONDS", "600")) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    said = False
    while time.monotonic() < deadline:
        try:
            if first:
                socket.getaddrinfo(host, int(port))
            else:
                socket.create_connection((host, int(port)), timeout=2).close()
            return
        except OSError as exc:
            if not said:
                print(f"hone-trainer: waiting for the rendezvous at {host}:{port} ({exc})", file=sys.stderr, flush=True)
                said = True
            time.sleep(0.5)


def cmd_launch(args: argparse.Namespace) -> int:
    """Run the launcher (torchrun) and exit with the trainer's own exit code.

    torchrun turns any worker's failure into exit code 1; rank 0's result names the error
    (``errorCode``), which maps back to the code the trainer exited with, so the Job's
    ``podFailurePolicy`` fails at once on a config, data or model error. SIGTERM and SIGINT
    are passed on (in a pod this process is PID 1, which the kernel sends nothing it has no
    handler for).
    """
    command = args.launcher[1:] if args.launcher[:1] == ["--"] else args.launcher
    if not command:
        return _fail(ExitCode.USAGE, "launch: no launcher command after --")
    config = load_config(args.config)
    _wait_for_rendezvous(command)
    try:
        proc = subprocess.Popen(command)
    except OSError as exc:
        return _fail(ExitCode.CONFIG_ERROR, f"launch: cannot start {command[0]!r}: {exc}")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    code = proc.wait()
    if code == 0:
        return 0
    if code < 0:
        return 128 - code
    try:
        text = Path(config.result_path).read_text()
    except OSError:
        text = ""
    result = contract.parse_result(text, contract.TrainingResult)
    if result is not None and not result.ok and result.error_code in contract.EXIT_CODE_OF_ERROR:
        return int(contract.EXIT_CODE_OF_ERROR[result.error_code])
    return code


def server_config(args: argparse.Namespace) -> contract.ServerConfig:
    """From ``--config`` (the operator's ConfigMap), with command-line flags on top."""
    from hone_trainer.serving import loading

    data: dict = {}
    if args.config:
        try:
            data = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(_fail(ExitCode.CONFIG_ERROR, f"cannot read the server config {args.config}: {exc}"))
    flags = {"host": args.host, "port": args.port, "apiKeysFile": getattr(args, "api_keys_file", None),
             "maxConcurrentRequests": getattr(args, "max_concurrent_requests", None),
             "maxBatchSize": getattr(args, "max_batch_size", None),
             "prefixCacheTokens": getattr(args, "prefix_cache_tokens", None),
             "cpuLinear": getattr(args, "cpu_linear", None),
             "servedModelName": getattr(args, "served_model_name", None)}
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.adapter:
        data["adapters"] = [a.to_json_dict() for a in loading.adapter_sources_from_args(args.adapter)]
    if args.model:
        data["baseModel"] = {"location": args.model, "trustRemoteCode": bool(getattr(args, "trust_remote_code", False))}
    try:
        if "baseModel" not in data:
            adapters = [contract.AdapterSource.model_validate(a) for a in data.get("adapters", [])]
            data["baseModel"] = loading.base_from_adapters(adapters).to_json_dict()
        return contract.ServerConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SystemExit(_fail(ExitCode.CONFIG_ERROR, f"server config: {where}: {first['msg']}"))
    except loading.ServingError as exc:
        raise SystemExit(_fail(ExitCode.MODEL_ERROR, str(exc)))


def cmd_serve(args: argparse.Namespace) -> int:
    from hone_trainer.serving.app import serve

    config = server_config(args)
    return serve(config, graceful_seconds=args.graceful_seconds, termination_log=args.termination_log,
                 listen_fd=args.listen_fd)


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch and verify every adapter into TARGET/<i> (the init step of a serving pod)."""
    from hone_trainer.serving import loading

    config = server_config(args)
    target = Path(args.target)
    try:  # the same checks as the server's: manifest hashes, base model, LoRA adapters, distinct names
        for i, (name, art) in enumerate(loading.resolve_adapters(config)):
            loading.fetch_to(art, target / str(i))
            print(json.dumps({"event": "fetched", "adapter": name, "path": str(target / str(i))}), flush=True)
    except loading.ServingError as exc:
        return _fail(ExitCode.MODEL_ERROR, str(exc))
    return int(ExitCode.OK)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The evaluation step after training: graders and the safety suite on the published fine-tune and its base;
    the results into the published manifest and ``--result`` (an :class:`EvaluationResult`). A failed safety
    gate is a result (exit 0), not an error: the operator and ModelServing act on it."""
    from hone_trainer.evaluation import runner

    config = load_config(args.config)
    if config.evaluation is None:
        return _fail(ExitCode.CONFIG_ERROR, f"{args.config}: evaluation is not set; there is nothing to evaluate")
    try:
        result = runner.evaluate(config.evaluation, config.output_uri, base=config.base_model,
                                 credentials_dir=config.output_credentials_dir)
    except runner.EvaluationError as exc:
        if args.result:
            write_result(args.result, contract.EvaluationResult(ok=False, message=str(exc)[:1000]))
        return _fail(ExitCode(exc.exit_code), str(exc))
    write_result(args.result, result)
    print(json.dumps(result.to_json_dict()), flush=True)
    return int(ExitCode.OK)


def _serving_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="ServerConfig JSON file (what the operator mounts)")
    p.add_argument("--model", help="base model: Hugging Face id, directory, .gguf, s3:// or embedded://NAME "
                   "(default: the base the first adapter was trained on)")
    p.add_argument("--adapter", action="append", metavar="[NAME=]LOCATION",
                   help="a published adapter folder or s3:// prefix; repeat for several")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help=f"port (default {contract.SERVER_PORT})")


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
    la = sub.add_parser("launch", help="run torchrun (after --) and exit with the trainer's own exit code")
    la.add_argument("--config", required=True, help="TrainerConfig JSON file (for its resultPath)")
    la.add_argument("launcher", nargs=argparse.REMAINDER, help="-- torchrun ... -m hone_trainer train ...")
    la.set_defaults(func=cmd_launch)
    s = sub.add_parser("serve", help="the OpenAI-compatible inference server (/v1, /health, /ready, /metrics)")
    _serving_args(s)
    s.add_argument("--served-model-name", help="name clients use for the base model")
    s.add_argument("--api-keys-file", help="file with accepted API keys, one per line")
    s.add_argument("--max-concurrent-requests", type=int, help="queued plus running requests before HTTP 429")
    s.add_argument("--max-batch-size", type=int, help="sequences decoded together")
    s.add_argument("--prefix-cache-tokens", type=int,
                   help="prompt tokens kept for prompts that start the same way (default 4096; 0: off)")
    s.add_argument("--cpu-linear", choices=("auto", "packed", "dense"),
                   help="on CPU: linear layers through oneDNN with packed weights, torch's default path, or "
                        "whichever is faster here, timed at load, each call's rows choosing where that differs "
                        "(default auto)")
    s.add_argument("--trust-remote-code", action="store_true", help="run the base model's own Python code")
    s.add_argument("--graceful-seconds", type=int, default=30, help="how long in-flight requests may finish on SIGTERM")
    s.add_argument("--listen-fd", type=int, default=None, help="serve on this inherited, already listening TCP "
                   "socket instead of binding --host/--port (a supervisor that picked the port, as hone api does)")
    s.add_argument("--termination-log", default=None, help="where to write why loading failed (in a pod: "
                   f"{contract.RESULT_PATH_IN_POD})")
    s.set_defaults(func=cmd_serve)
    f = sub.add_parser("fetch", help="fetch and verify the adapters of a server config into a folder")
    _serving_args(f)
    f.add_argument("--target", required=True, help="folder to copy adapter i into (as TARGET/i)")
    f.set_defaults(func=cmd_fetch)
    e = sub.add_parser("evaluate", help="graders and the safety suite on the published fine-tune and its base model")
    e.add_argument("--config", required=True, help="TrainerConfig JSON file (its evaluation, output and base model)")
    e.add_argument("--result", help="where to write the EvaluationResult JSON")
    e.set_defaults(func=cmd_evaluate)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
