"""Hone's API, group ``hone.dev``, version ``v1alpha1``: the one source of truth.

The CRDs in ``crds/`` are generated from these models
(``python -m hone_operator.api.crdgen``) and the operator parses every object
it reads into them, so a field exists in exactly one place. Field docstrings
(``description=``) become ``kubectl explain`` text.

Naming follows Kubernetes: camelCase in YAML, ``spec``/``status``, references
are ``{name}`` objects in the object's own namespace.

One module a kind, as kubebuilder keeps one ``*_types.go`` a kind: ``finetunejob``,
``modelserving``, ``tokenbudget``, and ``common`` for what they share. Everything is re-exported here,
so ``from hone_operator.api.v1alpha1 import FineTuneJob`` is how the rest of Hone
imports them.
"""

from hone_operator.api.v1alpha1.common import (  # noqa: F401
    GROUP,
    VERSION,
    API_VERSION,
    RECONCILE_REQUESTED_AT,
    SAFETY_OVERRIDE_ANNOTATION,
    ApiModel,
    StatusModel,
    AutoOrPositiveInt,
    AutoOrPositiveNumber,
    ZeroStage,
    Quantity,
    FreeForm,
    check_quantity,
    NamespacedRef,
    ConfigMapKeyRef,
    SecretRef,
    FineTuneJobRef,
    URI_SCHEMES,
    uri_scheme,
    parse_pvc_uri,
    check_uri,
    Condition,
    ObjectMeta,
)
from hone_operator.api.v1alpha1.finetunejob import (  # noqa: F401
    BaseModelSpec,
    LoraSpec,
    DataSource,
    Hyperparameters,
    Toleration,
    ResourcesSpec,
    DeepSpeedSpec,
    MemorySpec,
    OutputSpec,
    CheckpointingSpec,
    ScreeningPatternSpec,
    ModerationSpec,
    DataScreeningSpec,
    EvaluationSpec,
    JudgeSpec,
    SafetySpec,
    FineTuneJobSpec,
    FineTuneJobPhase,
    ScreeningFinding,
    ScreeningStatus,
    DatasetStatus,
    EstimateStatus,
    MemoryStatus,
    FineTunedModel,
    BudgetUse,
    ErrorStatus,
    EvaluationScores,
    EvaluationStatus,
    GraderStatus,
    SafetyStatus,
    FineTuneJobStatus,
    FineTuneJob,
)
from hone_operator.api.v1alpha1.modelserving import (  # noqa: F401
    AdapterSpec,
    AutoscalingSpec,
    ServingResourcesSpec,
    ModelServingSpec,
    ModelServingPhase,
    ModelServingStatus,
    ModelServing,
)
from hone_operator.api.v1alpha1.tokenbudget import (  # noqa: F401
    TrainingLimits,
    InferenceLimits,
    TokenBudgetSpec,
    ReservedEstimate,
    Reservation,
    TrainingUsage,
    ServerGrant,
    InferenceUsage,
    TokenBudgetStatus,
    TokenBudget,
)
