"""The contract between the Hone operator and the runtime (trainer and server).

Pure and torch-free: the operator imports this package, so nothing here may
import torch, transformers or kopf. One module a concern:

* ``config``: :class:`TrainerConfig`, the one file (``config.json``) a trainer
  or validator pod reads, also what ``hone run`` writes locally;
* ``results``: :class:`ValidationResult` (what ``python -m hone_trainer
  validate`` writes; in a cluster the pod's termination message),
  :class:`Progress` (what rank 0 patches into ``status.progress``) and
  :class:`TrainingResult` (what rank 0 writes once the model is published);
* ``server``: :class:`ServerConfig`, what ``python -m hone_trainer serve``
  reads, and how served models are named;
* ``commands``: the pods' commands, mount paths and :class:`ExitCode`, which
  tells a retryable failure from one that retrying cannot fix;
* ``hyperparameters``: the resolution of ``auto`` (OpenAI's heuristics);
* ``memory``: the model's shape and a training rank's memory estimate;
* ``pricing``: the price table and the cost arithmetic, so that the
  validator, the operator and the CLI agree to the cent;
* ``base``: camelCase JSON and results sized for a termination message.

Everything is re-exported here: ``from hone_trainer import contract`` and
``contract.TrainerConfig`` is how both sides use it.
"""

from hone_trainer.contract.base import (  # noqa: F401
    TERMINATION_MESSAGE_LIMIT,
    CamelModel,
    to_termination_message,
    parse_result,
)
from hone_trainer.contract.commands import (  # noqa: F401
    CONFIG_MOUNT_PATH,
    CONFIG_FILE,
    RESULT_PATH_IN_POD,
    SERVER_CONFIG_FILE,
    SERVER_PORT,
    validate_command,
    train_module_args,
    launch_command,
    serve_command,
    fetch_command,
    evaluate_command,
    ExitCode,
    NON_RETRYABLE_EXIT_CODES,
    EXIT_CODE_OF_ERROR,
)
from hone_trainer.contract.memory import (  # noqa: F401
    MemoryEstimate,
    MemoryPlan,
    ModelShape,
)
from hone_trainer.contract.pricing import (  # noqa: F401
    PriceTable,
    cost_usd,
)
from hone_trainer.contract.hyperparameters import (  # noqa: F401
    ResolvedHyperparameters,
    resolve_hyperparameters,
)
from hone_trainer.contract.config import (  # noqa: F401
    DataFile,
    ModelSource,
    LoraConfig,
    DeepSpeedSettings,
    ProgressReporting,
    JobIdentity,
    TrainerConfig,
    ValidatedData,
    DataScreening,
    ScreeningPattern,
)
from hone_trainer.contract.evaluation import (  # noqa: F401
    OUTPUT_TEXT,
    StringCheckGrader,
    TextSimilarityGrader,
    ScoreMessage,
    ScoreModelGrader,
    Grader,
    JudgeEndpoint,
    SafetySettings,
    EvaluationConfig,
    Scores,
    GraderFailure,
    SafetyGate,
    EvaluationResult,
)
from hone_trainer.contract.results import (  # noqa: F401
    MAX_LOSS_POINTS,
    LossPoint,
    evenly_spaced,
    loss_curve,
    ProblemKind,
    Problem,
    Finding,
    ScreeningResult,
    ValidationResult,
    Progress,
    CHECKPOINT_MODEL_DIR,
    checkpoint_model_name,
    CheckpointInfo,
    TrainingResult,
)
from hone_trainer.contract.server import (  # noqa: F401
    AdapterSource,
    QuotaAnswer,
    QuotaReport,
    QuotaSettings,
    ServerConfig,
    normalise_location,
    default_served_name,
)
