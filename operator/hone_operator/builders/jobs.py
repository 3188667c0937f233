"""The Jobs a FineTuneJob runs, and the Service its nodes meet through.

* ``<name>-validate``: the ValidatingFiles step (``python -m hone_trainer validate``);
* ``<name>-train``: one pod per node running torchrun with one process per GPU,
  DeepSpeed under it; an Indexed Job when there are several nodes;
* ``<name>-eval``: the evaluation step after training (``python -m hone_trainer evaluate``): the base model and
  the fine-tune answer the eval file and the safety suite, one pod with one GPU (or the CPUs) of a training node;
* ``<name>-train`` headless Service: stable pod DNS names for the rendezvous.

Exit codes the trainer uses for what retrying cannot fix fail the Job at once
(``podFailurePolicy``); a disrupted pod (preemption, eviction) is never counted.
"""

from __future__ import annotations

from typing import Any

from hone_operator.api.v1alpha1 import FineTuneJob
from hone_operator.builders import common
from hone_operator.builders.finetunejob import (
    CONFIG_PATH,
    EVALUATOR_CONTAINER,
    TRAINER_CONTAINER,
    VALIDATOR_CONTAINER,
    Names,
    kueue_labels,
    labels,
    owner,
)
from hone_operator.builders.storage import Storage
from hone_operator.settings import OperatorSettings
from hone_trainer import contract


def _pod_failure_policy(container: str) -> dict[str, Any]:
    return {
        "rules": [
            # Bad config, bad data, unusable model: retrying cannot help.
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container,
                    "operator": "In",
                    "values": sorted(int(c) for c in contract.NON_RETRYABLE_EXIT_CODES),
                },
            },
            # Preemption, eviction, node drain: not the job's fault, never counted.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def _base_volumes(ftj: FineTuneJob, storage: Storage, shm: str | None) -> list[dict[str, Any]]:
    volumes = [
        {"name": "config", "configMap": {"name": Names.of(ftj.metadata.name).config}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ]
    if shm:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
    return volumes + list(storage.volumes.values())


def _base_mounts(storage: Storage, shm: bool) -> list[dict[str, Any]]:
    mounts = [
        {"name": "config", "mountPath": contract.CONFIG_MOUNT_PATH, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": common.CACHE_DIR},
    ]
    if shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return mounts + list(storage.mounts.values())


def validation_job(ftj: FineTuneJob, settings: OperatorSettings, storage: Storage) -> dict[str, Any]:
    """The ValidatingFiles step: counts tokens with the base model's tokenizer.

    The validator writes :class:`hone_trainer.contract.ValidationResult` as
    its termination message (at most 4 KiB, problem lists shortened to fit),
    which the operator reads back from the finished pod.
    """
    names = Names.of(ftj.metadata.name)
    lbls = labels(ftj, "validate")
    container = {
        "name": VALIDATOR_CONTAINER,
        "image": ftj.spec.image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": contract.validate_command(CONFIG_PATH, contract.RESULT_PATH_IN_POD),
        "env": common.env(),
        "resources": common.resources(settings.validation_resources.cpu, settings.validation_resources.memory),
        "securityContext": common.container_security_context(),
        "volumeMounts": _base_mounts(storage, shm=False),
        "terminationMessagePath": contract.RESULT_PATH_IN_POD,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return _one_pod_job(ftj, settings, storage, names.validation_job, lbls, container, deadline=3600)


def _one_pod_job(ftj: FineTuneJob, settings: OperatorSettings, storage: Storage, name: str, lbls: dict[str, str],
                 container: dict[str, Any], deadline: int) -> dict[str, Any]:
    """A step that runs one pod with no API token (validation, evaluation); its result is its termination
    message, and the trainer's non-retryable exit codes fail it at once."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": common.metadata(name, ftj.metadata.namespace or "default", lbls, owner(ftj)),
        "spec": {
            "backoffLimit": settings.validation_backoff_limit,
            "activeDeadlineSeconds": deadline,
            "podFailurePolicy": _pod_failure_policy(container["name"]),
            "template": {
                "metadata": {"labels": lbls},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": common.pod_security_context(settings.run_as_user),
                    "containers": [container],
                    "volumes": _base_volumes(ftj, storage, shm=None),
                    **common.scheduling(ftj.spec.resources),
                },
            },
        },
    }


def evaluation_job(ftj: FineTuneJob, settings: OperatorSettings, storage: Storage) -> dict[str, Any]:
    """The evaluation step: the published fine-tune and its base model in the built-in server's engine, on one
    GPU of the kind training used (or the training pod's CPUs), with the job's mounts (the output writable: the
    results go into the published manifest). It writes :class:`hone_trainer.contract.EvaluationResult` as its
    termination message. No ServiceAccount token: it talks to no API server."""
    r = ftj.spec.resources
    names = Names.of(ftj.metadata.name)
    lbls = labels(ftj, "eval")
    gpus = 1 if r.gpusPerNode else 0
    container = {
        "name": EVALUATOR_CONTAINER,
        "image": ftj.spec.image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": contract.evaluate_command(CONFIG_PATH, contract.RESULT_PATH_IN_POD),
        "env": [*common.env(), *([] if gpus else [common.CPU_THREADS])],
        "resources": common.resources(r.cpu or settings.training_resources.cpu,
                                      r.memory or settings.training_resources.memory, {r.gpuResourceName: gpus}),
        "securityContext": common.container_security_context(),
        "volumeMounts": _base_mounts(storage, shm=False),
        "terminationMessagePath": contract.RESULT_PATH_IN_POD,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return _one_pod_job(ftj, settings, storage, names.evaluation_job, lbls, container, deadline=4 * 3600)


def training_command(ftj: FineTuneJob, settings: OperatorSettings) -> list[str]:
    r = ftj.spec.resources
    nproc = r.gpusPerNode or 1
    trainer = contract.train_module_args(CONFIG_PATH)
    if r.nodes == 1:
        return contract.launch_command(CONFIG_PATH, [
            "torchrun", "--standalone", "--nnodes=1", f"--nproc-per-node={nproc}", *trainer])
    # A static rendezvous: node i is Job index i, and index 0 hosts the store at its own stable name. (With
    # c10d, a pod hosted the store only if that name already resolved to its own address when torchrun
    # started; otherwise every pod timed out and spent the backoffLimit.) The kubelet expands
    # $(JOB_COMPLETION_INDEX), which the Job controller sets in each pod of an Indexed Job.
    names = Names.of(ftj.metadata.name)
    return contract.launch_command(CONFIG_PATH, [
        "torchrun",
        f"--nnodes={r.nodes}",
        f"--nproc-per-node={nproc}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        f"--master-addr={names.training_job}-0.{names.service}",
        f"--master-port={settings.rendezvous_port}",
        "--max-restarts=0",
        *trainer,
    ])


def _trainer_container(ftj: FineTuneJob, settings: OperatorSettings, storage: Storage) -> dict[str, Any]:
    """torchrun + the trainer: GPUs, ports (metrics; rendezvous with several nodes), mounts, result file."""
    r = ftj.spec.resources
    ports = [{"name": "metrics", "containerPort": settings.trainer_metrics_port, "protocol": "TCP"}]
    if r.nodes > 1:
        ports.append({"name": "rendezvous", "containerPort": settings.rendezvous_port, "protocol": "TCP"})
    return {
        "name": TRAINER_CONTAINER,
        "image": ftj.spec.image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": training_command(ftj, settings),
        # On GPUs torchrun gives each rank one thread; on CPU the one process gets the pod's CPUs.
        "env": [*common.env({"HONE_NODES": str(r.nodes), "DS_ACCELERATOR": "cuda" if r.gpusPerNode else "cpu"}),
                *([] if r.gpusPerNode else [common.CPU_THREADS])],
        "ports": ports,
        "resources": common.resources(
            r.cpu or settings.training_resources.cpu,
            r.memory or settings.training_resources.memory,
            {r.gpuResourceName: r.gpusPerNode},
        ),
        "securityContext": common.container_security_context(),
        "volumeMounts": _base_mounts(storage, shm=True),
        "terminationMessagePath": contract.RESULT_PATH_IN_POD,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def training_job(
    ftj: FineTuneJob, settings: OperatorSettings, storage: Storage, suspend: bool
) -> dict[str, Any]:
    """One pod per node running torchrun with one process per GPU, DeepSpeed under it."""
    spec = ftj.spec
    r = spec.resources
    names = Names.of(ftj.metadata.name)
    ns = ftj.metadata.namespace or "default"
    lbls = labels(ftj, "train")
    job_labels = {**lbls, **kueue_labels(ftj, settings)}
    shm = str(r.sharedMemory or settings.shared_memory)
    container = _trainer_container(ftj, settings, storage)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": names.trainer_identity,
        # The trainer patches this job's status (progress) with this token.
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "securityContext": common.pod_security_context(settings.run_as_user),
        "containers": [container],
        "volumes": _base_volumes(ftj, storage, shm=shm),
        **common.scheduling(ftj.spec.resources),
    }
    job_spec: dict[str, Any] = {
        "completions": r.nodes,
        "parallelism": r.nodes,
        "completionMode": "Indexed" if r.nodes > 1 else "NonIndexed",
        "backoffLimit": settings.backoff_limit,
        "podFailurePolicy": _pod_failure_policy(TRAINER_CONTAINER),
        "suspend": suspend,
        "template": {"metadata": {"labels": lbls}, "spec": pod_spec},
    }
    if r.nodes > 1:
        pod_spec["subdomain"] = names.service
    if spec.activeDeadlineSeconds:
        job_spec["activeDeadlineSeconds"] = spec.activeDeadlineSeconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": common.metadata(names.training_job, ns, job_labels, owner(ftj)),
        "spec": job_spec,
    }


def headless_service(ftj: FineTuneJob, settings: OperatorSettings) -> dict[str, Any]:
    """Stable DNS names for the pods of a multi-node Indexed Job (rendezvous on pod 0)."""
    names = Names.of(ftj.metadata.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": common.metadata(
            names.service, ftj.metadata.namespace or "default", labels(ftj, "train"), owner(ftj)
        ),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {common.FINETUNEJOB_LABEL: labels(ftj, "train")[common.FINETUNEJOB_LABEL],
                         common.COMPONENT_LABEL: "train"},
            "ports": [
                {"name": "rendezvous", "port": settings.rendezvous_port, "targetPort": settings.rendezvous_port,
                 "protocol": "TCP"},
            ],
        },
    }
