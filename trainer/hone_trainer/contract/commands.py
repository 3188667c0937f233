"""How the operator starts the runtime's pods, where they read and write, and what their exit codes mean."""

from __future__ import annotations

import enum

#: Where the pods the operator creates read their config and write their result.
CONFIG_MOUNT_PATH = "/etc/hone"
CONFIG_FILE = "config.json"
RESULT_PATH_IN_POD = "/dev/termination-log"

SERVER_CONFIG_FILE = "server.json"
SERVER_PORT = 8000


def validate_command(config_path: str, result_path: str) -> list[str]:
    """How the operator (and ``hone run``) invokes the ValidatingFiles step.

    ``python -m hone_trainer validate`` reads :class:`TrainerConfig` from
    ``--config``, writes :class:`ValidationResult` (see
    :func:`to_termination_message`) to ``--result`` and exits with
    :attr:`ExitCode.OK`, or :attr:`ExitCode.DATA_ERROR` when the data is not
    trainable (the result is written either way).
    """
    return ["python", "-m", "hone_trainer", "validate", "--config", config_path, "--result", result_path]


def launch_command(config_path: str, launcher: list[str]) -> list[str]:
    """The training pod's command: ``launcher`` (torchrun and its options, then :func:`train_module_args`)
    under ``python -m hone_trainer launch``, which exits with the trainer's own exit code.

    torchrun exits 1 whatever its workers exited with, so without this the ``podFailurePolicy``
    never sees a config, data or model error and retries what cannot succeed.
    """
    return ["python", "-m", "hone_trainer", "launch", "--config", config_path, "--", *launcher]


def train_module_args(config_path: str) -> list[str]:
    """What follows ``torchrun <launcher options>``: one process per GPU runs this.

    ``python -m hone_trainer train`` reads :class:`TrainerConfig`, reports
    :class:`Progress` as the config says, and on rank 0 writes
    :class:`TrainingResult` to ``config.result_path`` at exit.
    """
    return ["-m", "hone_trainer", "train", "--config", config_path]


def serve_command(config_path: str) -> list[str]:
    """How the operator (and ``hone serve``) starts the built-in server."""
    return ["python", "-m", "hone_trainer", "serve", "--config", config_path]


def evaluate_command(config_path: str, result_path: str) -> list[str]:
    """The evaluation step after training: ``python -m hone_trainer evaluate`` reads :class:`TrainerConfig` (its
    ``evaluation``, output and base model), writes the results into the published manifest and
    :class:`EvaluationResult` to ``--result``, and exits :attr:`ExitCode.OK` (a failed safety gate included)."""
    return ["python", "-m", "hone_trainer", "evaluate", "--config", config_path, "--result", result_path]


def fetch_command(config_path: str, target: str) -> list[str]:
    """The init step: fetch and verify every adapter of a :class:`ServerConfig` into ``target``."""
    return ["python", "-m", "hone_trainer", "fetch", "--config", config_path, "--target", target]


class ExitCode(enum.IntEnum):
    """Exit codes of ``python -m hone_trainer``.

    The operator's ``podFailurePolicy`` fails the Job at once on any code in
    :data:`NON_RETRYABLE_EXIT_CODES`; every other non-zero code (a crash, an
    out-of-memory kill, a lost node) is retried up to the backoff limit, and
    the trainer resumes from its newest complete checkpoint.
    """

    OK = 0
    #: An unexpected failure: retrying may help (network, node, OOM).
    RETRYABLE = 1
    #: Command-line usage error (argparse's own code).
    USAGE = 2
    #: The trainer config is invalid or asks for something impossible here, or the trainer's
    #: ServiceAccount may not report progress.
    CONFIG_ERROR = 3
    #: The training or validation data is not trainable.
    DATA_ERROR = 4
    #: The base model cannot be loaded (missing, not safetensors, remote code).
    MODEL_ERROR = 5
    #: Publishing the result failed in a way retrying cannot fix (permissions), or a checkpoint in the
    #: output holds code (loading it would run it).
    OUTPUT_ERROR = 6


#: A TrainingResult's ``errorCode`` -> the exit code the trainer exited with for it.
EXIT_CODE_OF_ERROR: dict[str, ExitCode] = {
    "invalid_config": ExitCode.CONFIG_ERROR,
    "permission_denied": ExitCode.CONFIG_ERROR,
    "unsafe_checkpoint": ExitCode.OUTPUT_ERROR,
    "invalid_training_file": ExitCode.DATA_ERROR,
    "model_error": ExitCode.MODEL_ERROR,
}

NON_RETRYABLE_EXIT_CODES: tuple[int, ...] = (
    ExitCode.USAGE,
    ExitCode.CONFIG_ERROR,
    ExitCode.DATA_ERROR,
    ExitCode.MODEL_ERROR,
    ExitCode.OUTPUT_ERROR,
)
