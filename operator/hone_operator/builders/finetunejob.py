"""Pure builders of everything a FineTuneJob owns.

Each function takes the parsed FineTuneJob and the operator settings and
returns plain dicts ready for the API server; nothing here talks to a
cluster, so unit tests (and ``hone render``) call them directly.

Children, all named deterministically from the FineTuneJob so that a
restarted operator finds them instead of creating twins:

* ``<name>-config``   ConfigMap with the trainer config (and inline data);
* ``<name>-trainer``  ServiceAccount + Role + RoleBinding: the training pod may
  get and patch the status of this one FineTuneJob, nothing else;
* ``<name>-validate`` Job: the ValidatingFiles step;
* ``<name>-train``    Job: torchrun + DeepSpeed (Indexed for several nodes);
* ``<name>-train``    headless Service for torchrun's rendezvous (several nodes).

This module holds the names, labels, the trainer config a spec resolves to, the
ConfigMap and the RBAC; :mod:`hone_operator.builders.jobs` the two Jobs and the Service.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from hone_operator.api.v1alpha1 import (
    DataSource,
    EvaluationSpec,
    FineTuneJob,
    parse_pvc_uri,
    uri_scheme,
)
from hone_operator.builders import common
from hone_operator.builders.storage import (
    Storage, base_model_source, data_location, in_cluster, join_path, uploaded,
)
from hone_operator.settings import OperatorSettings
from hone_trainer import contract

KIND = "FineTuneJob"
TRAINER_CONTAINER = "trainer"
VALIDATOR_CONTAINER = "validator"
EVALUATOR_CONTAINER = "evaluator"
#: The ``app.kubernetes.io/component`` of the two Jobs a FineTuneJob owns.
JOB_COMPONENTS = ("validate", "train", "eval")

CONFIG_PATH = f"{contract.CONFIG_MOUNT_PATH}/{contract.CONFIG_FILE}"


@dataclass(frozen=True)
class Names:
    config: str
    trainer_identity: str
    validation_job: str
    training_job: str
    evaluation_job: str
    service: str
    #: Not <name>-network: that is the ModelServing's, and a ModelServing often has its job's name (hone api's
    #: always do); one name for both made the server's policy replace the job's.
    network: str

    @classmethod
    def of(cls, name: str) -> "Names":
        return cls(
            config=common.child_name(name, "config"),
            trainer_identity=common.child_name(name, "trainer"),
            validation_job=common.child_name(name, "validate"),
            training_job=common.child_name(name, "train"),
            evaluation_job=common.child_name(name, "eval"),
            service=common.child_name(name, "train"),
            network=common.child_name(name, "job-network"),
        )


def fine_tuned_model_name(ftj: FineTuneJob) -> str:
    """``ft:<base>:<namespace>:<suffix>:<id>``, OpenAI's shape with the namespace as org."""
    uri = ftj.spec.baseModel.uri
    base = uri.split("://", 1)[-1].rstrip("/").rsplit("/", 1)[-1]
    base = re.sub(r"\.gguf$", "", base, flags=re.I).lower()
    base = re.sub(r"[^a-z0-9._-]", "-", base) or "model"
    uid = (ftj.metadata.uid or ftj.metadata.name).replace("-", "")
    return f"ft:{base}:{ftj.metadata.namespace}:{ftj.spec.suffix or ''}:{uid[:8]}"


def owner(ftj: FineTuneJob) -> dict[str, Any]:
    return common.owner_reference(KIND, ftj.metadata.name, ftj.metadata.uid or "")


def labels(ftj: FineTuneJob, component: str) -> dict[str, str]:
    return common.labels(common.FINETUNEJOB_LABEL, ftj.metadata.name, component)


def selector(name: str, component: str | None = None) -> str:
    """Label selector of a FineTuneJob's children (optionally of one component)."""
    sel = f"{common.FINETUNEJOB_LABEL}={name[:63].rstrip('-.')}"
    return f"{sel},{common.COMPONENT_LABEL}={component}" if component else sel


def kueue_labels(ftj: FineTuneJob, settings: OperatorSettings) -> dict[str, str]:
    if not settings.kueue_enabled:
        return {}
    src = ftj.metadata.labels or {}
    return {k: src[k] for k in (common.KUEUE_QUEUE_LABEL, common.KUEUE_PRIORITY_LABEL) if k in src}


def resolve(ftj: FineTuneJob, settings: OperatorSettings) -> tuple[contract.TrainerConfig, Storage]:
    """The trainer config as the pods see it, and the volumes that make it true.

    Raises :class:`~hone_operator.builders.common.SpecError` naming the field for anything a cluster cannot run.
    """
    spec = ftj.spec
    storage = Storage()
    ns, name = ftj.metadata.namespace or "default", ftj.metadata.name

    model = base_model_source(spec.baseModel, storage, "spec.baseModel.uri")

    def source(src: DataSource, param: str) -> DataSource:
        return uploaded(src, settings.api_store, settings.api_store_secret, ns, param)

    training = data_location(source(spec.trainingData, "spec.trainingData"), "training", storage, "spec.trainingData")
    validation = (
        data_location(source(spec.validationData, "spec.validationData"), "validation", storage,
                      "spec.validationData")
        if spec.validationData
        else None
    )

    output = spec.output.uri
    in_cluster(output, "spec.output.uri")
    if uri_scheme(output) == "pvc":
        job_root = join_path(storage.pvc_path(output, writable=True), ns, name)
        out_credentials = None
    else:
        job_root = join_path(output, ns, name)
        out_credentials = storage.secret(spec.output.credentialsSecret)

    config = trainer_config(
        ftj, settings, base_model=model, training=training, validation=validation,
        output_uri=join_path(job_root, "model"), checkpoint_dir=join_path(job_root, "checkpoints"),
        output_credentials_dir=out_credentials,
        progress=contract.ProgressReporting(kind="kubernetes", namespace=ns, name=name,
                                            interval_seconds=settings.progress_interval_seconds),
        metrics_port=settings.trainer_metrics_port, result_path=contract.RESULT_PATH_IN_POD,
        secret_dir=storage.secret,
        evaluation=evaluation_config(spec.evaluation, lambda src, which, param: data_location(
            source(src, param), which, storage, param), storage.secret))
    return config, storage


@dataclass(frozen=True)
class Reference:
    """An object in the FineTuneJob's namespace that must exist before anything runs."""

    api_version: str
    kind: str
    name: str
    param: str
    key: str | None = None  # for a ConfigMap: the key that must be present


def references(ftj: FineTuneJob) -> list[Reference]:
    """ConfigMaps and PersistentVolumeClaims the pods will mount.

    Secrets are not listed on purpose: checking them would need read access to
    Secrets, which the operator does without; a missing Secret shows on the
    pod as a mount failure.
    """
    refs: list[Reference] = []
    ev = ftj.spec.evaluation
    sources = [("spec.trainingData", ftj.spec.trainingData), ("spec.validationData", ftj.spec.validationData),
               ("spec.evaluation.evalFile", ev.evalFile if ev else None),
               ("spec.evaluation.safety.extraSuite", ev.safety.extraSuite if ev else None)]
    for param, src in sources:
        if src is not None and src.configMap is not None:
            refs.append(Reference("v1", "ConfigMap", src.configMap.name, f"{param}.configMap", src.configMap.key))
    uris = [("spec.baseModel.uri", ftj.spec.baseModel.uri), ("spec.output.uri", ftj.spec.output.uri)]
    uris += [(f"{param}.uri", src.uri) for param, src in sources if src is not None and src.uri]
    for param, uri in uris:
        if uri_scheme(uri) == "pvc":
            refs.append(Reference("v1", "PersistentVolumeClaim", parse_pvc_uri(uri)[0], param))
    return refs


def trainer_config(ftj: FineTuneJob, settings: OperatorSettings, *, base_model: contract.ModelSource,
                   training: contract.DataFile, validation: contract.DataFile | None,
                   secret_dir: Callable[[Any], str | None] | None = None, **where: Any) -> contract.TrainerConfig:
    """The spec as the trainer reads it; ``where`` says where things are (cluster or local mode), ``secret_dir(ref)``
    where a Secret is mounted (cluster mode)."""
    spec = ftj.spec
    hp = spec.hyperparameters
    return contract.TrainerConfig(
        job=contract.JobIdentity(namespace=ftj.metadata.namespace or "default", name=ftj.metadata.name,
                                 uid=ftj.metadata.uid or "", fine_tuned_model=fine_tuned_model_name(ftj)),
        base_model=base_model,
        method=spec.method,
        lora=contract.LoraConfig(r=spec.lora.r, alpha=spec.lora.alpha, dropout=spec.lora.dropout,
                                 target_modules=spec.lora.targetModules or "auto"),
        training_data=training,
        validation_data=validation,
        epochs=hp.epochs,
        batch_size=hp.batchSize,
        learning_rate_multiplier=hp.learningRateMultiplier,
        max_seq_length=hp.maxSeqLength,
        over_length=hp.overLength,
        seed=hp.seed,
        deepspeed=contract.DeepSpeedSettings(zero_stage=spec.deepspeed.zeroStage,
                                             offload_optimizer=spec.deepspeed.offloadOptimizer,
                                             offload_params=spec.deepspeed.offloadParams,
                                             config_override=spec.deepspeed.config),
        micro_batch_tokens=spec.memory.microBatchTokens,
        gradient_checkpointing=spec.memory.gradientCheckpointing,
        checkpoint_interval_steps=spec.checkpointing.intervalSteps,
        keep_checkpoints=spec.checkpointing.keep,
        servable_checkpoints=spec.checkpointing.servable,
        checkpoint_each_epoch=spec.checkpointing.everyEpoch,
        merge_weights=spec.output.mergeWeights,
        prices=settings.prices_for(spec.baseModel.uri),
        screening=screening_config(spec.dataScreening or settings.data_screening, secret_dir),
        **where,
    )


#: The key of an apiKeySecret (the judge's, the moderations endpoint's) that holds the bearer token.
API_KEY = "api-key"


def _key_file(ref: Any, secret_dir: Callable[[Any], str | None] | None) -> str | None:
    """Where the token of an ``apiKeySecret`` is mounted (None without one, or where Secrets are not mounted)."""
    folder = secret_dir(ref) if secret_dir and ref is not None else None
    return f"{folder}/{API_KEY}" if folder else None


def evaluation_config(spec: EvaluationSpec | None, locate: Callable[[DataSource, str, str], contract.DataFile],
                      secret_dir: Callable[[Any], str | None] | None = None) -> contract.EvaluationConfig | None:
    """The evaluation step's config from ``spec.evaluation`` (without it: the safety suite alone, its defaults);
    None when it has nothing to run (no graders, the suite off). ``locate(source, which, param)`` says where a
    file is, ``secret_dir(ref)`` where a Secret is mounted (cluster or local mode)."""
    spec = spec or EvaluationSpec()
    if not spec.graders and not spec.safety.enabled:
        return None
    judge = None
    if spec.judge is not None:
        judge = contract.JudgeEndpoint(url=spec.judge.url, model=spec.judge.model,
                                       timeout_seconds=spec.judge.timeoutSeconds,
                                       api_key_file=_key_file(spec.judge.apiKeySecret, secret_dir))
    extra = spec.safety.extraSuite
    return contract.EvaluationConfig.model_validate({
        "eval_file": locate(spec.evalFile, "eval", "spec.evaluation.evalFile") if spec.evalFile else None,
        "graders": spec.graders, "judge": judge, "max_tokens": spec.maxTokens, "max_examples": spec.maxExamples,
        "safety": contract.SafetySettings(
            enabled=spec.safety.enabled, max_refusal_drop=spec.safety.maxRefusalDrop, judge=spec.safety.judge,
            extra_suite=locate(extra, "safety-suite", "spec.evaluation.safety.extraSuite") if extra else None)})


def screening_config(spec: Any, secret_dir: Callable[[Any], str | None] | None = None) -> contract.DataScreening:
    """The trainer's data screening from a FineTuneJob's ``spec.dataScreening`` (or the operator's default);
    ``secret_dir(ref)``: where a Secret is mounted."""
    moderation = spec.moderation
    return contract.DataScreening(
        personal_data=spec.personalData, kinds=list(spec.kinds),
        patterns=[contract.ScreeningPattern(name=p.name, regex=p.regex) for p in spec.patterns],
        blocklist=list(spec.blocklist), blocklist_policy=spec.blocklistPolicy,
        moderation_url=moderation.url if moderation else None,
        moderation_policy=moderation.policy if moderation else "reject",
        moderation_api_key_file=_key_file(moderation.apiKeySecret, secret_dir) if moderation else None)


# --------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------


def config_map(ftj: FineTuneJob, config: contract.TrainerConfig, storage: Storage) -> dict[str, Any]:
    data = {contract.CONFIG_FILE: json.dumps(config.to_json_dict(), indent=2, sort_keys=True)}
    data.update(storage.inline)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": common.metadata(
            Names.of(ftj.metadata.name).config, ftj.metadata.namespace or "default", labels(ftj, "config"), owner(ftj)
        ),
        "data": data,
    }


def trainer_rbac(ftj: FineTuneJob) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding: patch this one FineTuneJob's status, nothing more."""
    names = Names.of(ftj.metadata.name)
    ns = ftj.metadata.namespace or "default"
    meta = lambda kind: common.metadata(names.trainer_identity, ns, labels(ftj, "trainer"), owner(ftj))  # noqa: E731
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta("ServiceAccount"),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta("Role"),
            "rules": [
                {
                    "apiGroups": ["hone.dev"],
                    "resources": ["finetunejobs/status"],
                    "resourceNames": [ftj.metadata.name],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta("RoleBinding"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.trainer_identity},
            "subjects": [{"kind": "ServiceAccount", "name": names.trainer_identity, "namespace": ns}],
        },
    ]


def all_objects(ftj: FineTuneJob, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Every object the operator creates for this FineTuneJob over its life (for `hone render`)."""
    from hone_operator.builders import jobs, network  # they build on this module's names and labels

    config, storage = resolve(ftj, settings)
    policy = network.finetunejob_policy(ftj, settings)
    objs = [config_map(ftj, config, storage), *trainer_rbac(ftj), *([policy] if policy else []),
            jobs.validation_job(ftj, settings, storage)]
    if ftj.spec.resources.nodes > 1:
        objs.append(jobs.headless_service(ftj, settings))
    suspend = ftj.spec.suspend or bool(kueue_labels(ftj, settings))
    objs.append(jobs.training_job(ftj, settings, storage, suspend=suspend))
    if config.evaluation is not None:
        objs.append(jobs.evaluation_job(ftj, settings, storage))
    return objs
