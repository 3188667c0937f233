"""Pure builders of everything a ModelServing owns.

Children, named deterministically from the ModelServing:

* ``<name>-server``  ConfigMap with the server config (``server.json``);
* ``<name>``         Deployment: the built-in server (``runtime: hone``) or
  vLLM's OpenAI server (``runtime: vllm``);
* ``<name>``         Service (port 80 -> the server's port);
* ``<name>``         HorizontalPodAutoscaler when ``autoscaling`` is set.

What is served is resolved first (:func:`~hone_operator.builders.served.resolve`): the referenced
FineTuneJobs' published artifacts, their base model, and the volumes that
make those paths true inside the pod (a PVC mounted read-only at the same
path the trainer published to, so the manifest's base model matches).
Every child carries ``hone.dev/spec-hash``, the hash of all desired
children: the controller rewrites them only when it changes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from hone_operator.api.v1alpha1 import (
    ModelServing,
)
from hone_operator.builders import common, network
from hone_operator.builders.common import CACHE_DIR, SpecError
from hone_operator.builders.served import Resolved, resolve
from hone_operator.settings import OperatorSettings
from hone_trainer import contract

KIND = "ModelServing"
SERVER_CONTAINER = "server"
FETCH_CONTAINER = "fetch-adapters"
SPEC_HASH = "hone.dev/spec-hash"
HTTP_PORT = contract.SERVER_PORT
ADAPTERS_DIR = "/var/run/hone/adapters"
CONFIG_PATH = f"{contract.CONFIG_MOUNT_PATH}/{contract.SERVER_CONFIG_FILE}"
#: vLLM accepts these LoRA ranks for --max-lora-rank.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class Names:
    config: str
    deployment: str
    service: str
    hpa: str
    network: str

    @classmethod
    def of(cls, name: str) -> "Names":
        short = name if len(name) <= 52 else common.child_name(name, "msv")  # Service names must stay short
        return cls(config=common.child_name(name, "server"), deployment=short, service=short, hpa=short,
                   network=common.child_name(name, "network"))


def labels(msv: ModelServing, component: str = "server") -> dict[str, str]:
    return common.labels(common.MODELSERVING_LABEL, msv.metadata.name, component)


def selector_labels(msv: ModelServing) -> dict[str, str]:
    lbl = labels(msv)
    return {common.MODELSERVING_LABEL: lbl[common.MODELSERVING_LABEL], common.COMPONENT_LABEL: "server"}


def selector(msv: ModelServing) -> str:
    return server_selector(msv.metadata.name)


def server_selector(name: str) -> str:
    """Label selector of a ModelServing's server pods, from its name (as :func:`selector_labels` labels them)."""
    return f"{common.MODELSERVING_LABEL}={name[:63].rstrip('-.')},{common.COMPONENT_LABEL}=server"


def owner(msv: ModelServing) -> dict[str, Any]:
    return common.owner_reference(KIND, msv.metadata.name, msv.metadata.uid or "")


# --------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------


def config_map(msv: ModelServing, resolved: Resolved) -> dict[str, Any]:
    data = {contract.SERVER_CONFIG_FILE: json.dumps(resolved.config.to_json_dict(), indent=2, sort_keys=True)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": common.metadata(Names.of(msv.metadata.name).config, msv.metadata.namespace or "default",
                                    labels(msv, "config"), owner(msv)),
        "data": data,
    }


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 5,
            "failureThreshold": failures}


def _hone_container(msv: ModelServing, settings: OperatorSettings, resolved: Resolved) -> dict[str, Any]:
    r = msv.spec.resources
    return {
        "name": SERVER_CONTAINER,
        "image": msv.spec.image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [*contract.serve_command(CONFIG_PATH), "--termination-log", contract.RESULT_PATH_IN_POD,
                    "--graceful-seconds", str(settings.serving_graceful_seconds)],
        "env": [*common.env({"DS_ACCELERATOR": "cuda" if r.gpus else "cpu"}), common.CPU_THREADS],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "resources": common.resources(r.cpu or settings.serving_resources.cpu,
                                      r.memory or settings.serving_resources.memory, {r.gpuResourceName: r.gpus}),
        "securityContext": common.container_security_context(),
        # /health answers while the model loads; /ready once the model and every adapter are loaded.
        "livenessProbe": _probe("/health", 10, 6),
        "readinessProbe": _probe("/ready", 5, 2),
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},  # let endpoints drop the pod before draining
        "volumeMounts": _mounts(resolved, fetch=False),
        "terminationMessagePath": contract.RESULT_PATH_IN_POD,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def vllm_args(resolved: Resolved, gpus: int = 1) -> list[str]:
    """``vllm serve`` arguments: the base model, each adapter as a LoRA module under its served name.

    ``--max-lora-rank`` is here when every adapter's rank is in a spec; otherwise the container's start
    script reads the other adapters' ``adapter_config.json`` and adds it (:data:`VLLM_START`).
    """
    cfg, names = resolved.config, resolved.names
    args = ["serve", cfg.base_model.location, "--host", "0.0.0.0", "--port", str(HTTP_PORT),
            "--served-model-name", names[0], "--max-num-seqs", str(cfg.max_concurrent_requests)]
    if gpus > 1:
        args += ["--tensor-parallel-size", str(gpus)]  # one model over every GPU of the replica
    if cfg.base_model.revision:
        args += ["--revision", cfg.base_model.revision]
    if cfg.base_model.trust_remote_code:
        args.append("--trust-remote-code")
    if cfg.adapters:
        modules = [f"{names[i + 1]}={_vllm_adapter_path(resolved, i)}" for i in range(len(cfg.adapters))]
        args += ["--enable-lora", "--max-loras", str(len(cfg.adapters))]
        if None not in resolved.lora_ranks:
            args += ["--max-lora-rank", str(vllm_lora_rank(max(r for r in resolved.lora_ranks if r)))]
        args += ["--lora-modules", *modules]
    return args


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts for --max-lora-rank that holds ``rank``."""
    return next((v for v in VLLM_LORA_RANKS if v >= rank), VLLM_LORA_RANKS[-1])


#: The vLLM container's start, before ``exec vllm "$@"``: the LoRA rank of adapters given by URI, from
#: their adapter_config.json (HONE_LORA_DIRS; HONE_LORA_RANK is the largest rank the specs name), rounded
#: up as vLLM wants it; and the API key from the mounted Secret file (HONE_API_KEYS_FILE) into
#: VLLM_API_KEY, the one way vLLM takes a key without printing it with its arguments at start. vLLM takes
#: one key that way: a file with several fails the start, saying so, instead of serving only the first.
VLLM_START = """set -eu
if [ -n "${HONE_LORA_DIRS:-}" ]; then
  rank=$(python3 -c 'import json, sys
need = max([int(sys.argv[1])] + [int(json.load(open(d + "/adapter_config.json"))["r"]) for d in sys.argv[2:]])
print(next((r for r in (%(ranks)s) if r >= need), %(top)d))' "${HONE_LORA_RANK:-0}" $HONE_LORA_DIRS)
  set -- "$@" --max-lora-rank "$rank"
fi
if [ -n "${HONE_API_KEYS_FILE:-}" ]; then
  keys=$(grep -v '^[[:space:]]*#' "$HONE_API_KEYS_FILE" | grep -c '[^[:space:]]' || true)
  if [ "$keys" -gt 1 ]; then
    msg="$HONE_API_KEYS_FILE holds $keys API keys; vLLM takes one without logging it (serve several with runtime: hone)"
    echo "$msg" >/dev/termination-log 2>/dev/null || true
    echo "hone: $msg" >&2
    exit 3
  fi
  VLLM_API_KEY=$(grep -v '^[[:space:]]*#' "$HONE_API_KEYS_FILE" | grep '[^[:space:]]' | tr -d '[:space:]')
  export VLLM_API_KEY
fi
exec vllm "$@"
""" % {"ranks": ", ".join(str(r) for r in VLLM_LORA_RANKS), "top": VLLM_LORA_RANKS[-1]}


def _vllm_adapter_path(resolved: Resolved, i: int) -> str:
    if i in resolved.remote_adapters:
        return f"{ADAPTERS_DIR}/{i}"
    return resolved.config.adapters[i].location


def _vllm_container(msv: ModelServing, settings: OperatorSettings, resolved: Resolved) -> dict[str, Any]:
    r = msv.spec.resources
    _check_vllm(msv, resolved)
    env = common.env({
        "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        # UID 10001 has no passwd entry: torch inductor's getpass.getuser() needs USER (vllm#44548)
        "USER": "hone", "TORCHINDUCTOR_CACHE_DIR": f"{CACHE_DIR}/torchinductor",
        "VLLM_CACHE_ROOT": f"{CACHE_DIR}/vllm"})
    token_dir = resolved.config.base_model.credentials_dir
    if token_dir:
        env.append({"name": "HF_TOKEN_PATH", "value": f"{token_dir}/token"})
    if resolved.config.api_keys_file:
        env.append({"name": "HONE_API_KEYS_FILE", "value": resolved.config.api_keys_file})
    unknown = [i for i, rank in enumerate(resolved.lora_ranks) if rank is None]
    if unknown:
        env.append({"name": "HONE_LORA_DIRS", "value": " ".join(_vllm_adapter_path(resolved, i) for i in unknown)})
        env.append({"name": "HONE_LORA_RANK", "value": str(max([r for r in resolved.lora_ranks if r] or [0]))})
    return {
        "name": SERVER_CONTAINER,
        "image": msv.spec.image or settings.vllm_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["/bin/sh", "-c", VLLM_START, "vllm", *vllm_args(resolved, r.gpus)],
        "env": env,
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "resources": common.resources(r.cpu or settings.serving_resources.cpu,
                                      r.memory or settings.serving_resources.memory, {r.gpuResourceName: r.gpus}),
        "securityContext": common.container_security_context(),
        # vLLM binds only after loading: allow what the roll-out allows.
        "startupProbe": _probe("/health", 10, math.ceil(msv.spec.startupTimeoutSeconds / 10)),
        "livenessProbe": _probe("/health", 10, 6),
        "readinessProbe": _probe("/health", 5, 2),
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "volumeMounts": _mounts(resolved, fetch=bool(resolved.remote_adapters)),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _check_vllm(msv: ModelServing, resolved: Resolved) -> None:
    """What vLLM cannot serve, refused with the field instead of a pod that never starts."""
    base = resolved.config.base_model.location
    where = "spec.baseModel.uri" if msv.spec.baseModel is not None else "spec.fineTuneJobRef (its baseModel.uri)"
    if base.startswith("embedded://"):
        raise SpecError(where, f"runtime vllm cannot load {base}: the embedded model ships with Hone's runtime "
                        "image as GGUF; serve it with runtime: hone, or give vLLM a Hugging Face id or a folder")
    if base.endswith(".gguf"):
        raise SpecError(where, f"runtime vllm does not load the GGUF file {base} as Hone does (dequantised); "
                        "use runtime: hone, or a folder of safetensors")
    if base.startswith("s3://"):
        raise SpecError(where, f"runtime vllm cannot read {base} from S3 itself; copy the model to a "
                        "PersistentVolumeClaim (pvc://) or use runtime: hone, which fetches it")
def _fetch_container(msv: ModelServing, settings: OperatorSettings, resolved: Resolved) -> dict[str, Any]:
    """Init step (vLLM with S3 adapters): download and verify each adapter against its manifest."""
    return {
        "name": FETCH_CONTAINER,
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": contract.fetch_command(CONFIG_PATH, ADAPTERS_DIR),
        "env": common.env(),
        "resources": common.resources("1", "2Gi"),
        "securityContext": common.container_security_context(),
        "volumeMounts": _mounts(resolved, fetch=True),
    }


def _mounts(resolved: Resolved, fetch: bool) -> list[dict[str, Any]]:
    mounts = [
        {"name": "config", "mountPath": contract.CONFIG_MOUNT_PATH, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    if fetch:
        mounts.append({"name": "adapters", "mountPath": ADAPTERS_DIR})
    return mounts + list(resolved.storage.mounts.values())


def deployment(msv: ModelServing, settings: OperatorSettings, resolved: Resolved, spec_hash: str) -> dict[str, Any]:
    spec = msv.spec
    ns = msv.metadata.namespace or "default"
    lbls = labels(msv)
    init: list[dict[str, Any]] = []
    if spec.runtime == "vllm":
        container = _vllm_container(msv, settings, resolved)
        if resolved.remote_adapters:
            init.append(_fetch_container(msv, settings, resolved))
    else:
        container = _hone_container(msv, settings, resolved)
    volumes = [
        {"name": "config", "configMap": {"name": Names.of(msv.metadata.name).config}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ]
    if init:
        volumes.append({"name": "adapters", "emptyDir": {}})
    volumes += list(resolved.storage.volumes.values())
    if spec.runtime == "vllm":
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shared_memory}})
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    quota = resolved.config.quota
    if quota is not None:
        _quota(container, volumes, quota)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the server never calls the Kubernetes API
        "enableServiceLinks": False,
        "securityContext": common.pod_security_context(settings.run_as_user),
        "terminationGracePeriodSeconds": settings.serving_graceful_seconds + 15,
        "containers": [container],
        "volumes": volumes,
        **common.scheduling(msv.spec.resources),
    }
    if init:
        pod_spec["initContainers"] = init
    dep_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(msv)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": spec.startupTimeoutSeconds,
        "template": {
            "metadata": {
                "labels": lbls,
                "annotations": {
                    SPEC_HASH: spec_hash,  # a changed spec rolls the pods
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(HTTP_PORT),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": pod_spec,
        },
    }
    if spec.autoscaling is None:
        dep_spec["replicas"] = spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": common.metadata(Names.of(msv.metadata.name).deployment, ns, lbls, owner(msv),
                                    annotations={SPEC_HASH: spec_hash}),
        "spec": dep_spec,
    }


#: The audience of the token a serving pod reports its usage with: good for the operator's quota endpoint
#: only, never accepted by the API server itself.
QUOTA_AUDIENCE = "hone-quota"


def _quota(container: dict[str, Any], volumes: list[dict[str, Any]], quota: contract.QuotaSettings) -> None:
    """What reporting to the namespace's budget needs: the pod's name and uid, a token with the quota
    audience, and an emptyDir that keeps the day's served count across restarts of the container."""
    token_dir = quota.token_file.rsplit("/", 1)[0]
    container["env"] += [{"name": "HONE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                         {"name": "HONE_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}]
    container["volumeMounts"].append({"name": "quota-token", "mountPath": token_dir, "readOnly": True})
    volumes.append({"name": "quota-token", "projected": {"sources": [{"serviceAccountToken": {
        "path": quota.token_file.rsplit("/", 1)[1], "audience": QUOTA_AUDIENCE, "expirationSeconds": 3600}}]}})
    if quota.journal:
        container["volumeMounts"].append({"name": "usage", "mountPath": quota.journal.rsplit("/", 1)[0]})
        volumes.append({"name": "usage", "emptyDir": {"sizeLimit": "1Mi"}})


def service(msv: ModelServing) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": common.metadata(Names.of(msv.metadata.name).service, msv.metadata.namespace or "default",
                                    labels(msv), owner(msv)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(msv),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def hpa(msv: ModelServing) -> dict[str, Any] | None:
    a = msv.spec.autoscaling
    if a is None:
        return None
    names = Names.of(msv.metadata.name)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": common.metadata(names.hpa, msv.metadata.namespace or "default", labels(msv), owner(msv)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": names.deployment},
            "minReplicas": a.minReplicas,
            "maxReplicas": a.maxReplicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": a.targetCPUUtilizationPercentage}}}],
        },
    }


def url(msv: ModelServing) -> str:
    return f"http://{Names.of(msv.metadata.name).service}.{msv.metadata.namespace or 'default'}.svc/v1"


def spec_hash(objs: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(objs, sort_keys=True).encode()).hexdigest()[:16]


def desired(msv: ModelServing, ftjs: dict[str, dict[str, Any] | None], settings: OperatorSettings
            ) -> tuple[list[dict[str, Any]], Resolved]:
    """Every child, in the order to apply them (the Deployment last), plus what they serve."""
    resolved = resolve(msv, ftjs, settings)
    names = resolved.names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError("spec.adapters", f"two models would be served as {dupes[0]!r}: give each adapter its own "
                        "name")
    objs = [config_map(msv, resolved), service(msv)]
    autoscaler = hpa(msv)
    if autoscaler:
        objs.append(autoscaler)
    policy = network.modelserving_policy(
        msv, settings, [resolved.config.base_model.location, *(a.location for a in resolved.config.adapters)],
        HTTP_PORT)
    if policy:
        objs.append(policy)
    digest = spec_hash([*objs, deployment(msv, settings, resolved, "")])
    for obj in objs:
        obj["metadata"].setdefault("annotations", {})[SPEC_HASH] = digest
    objs.append(deployment(msv, settings, resolved, digest))
    return objs, resolved


def all_objects(msv: ModelServing, settings: OperatorSettings,
                ftjs: dict[str, dict[str, Any] | None] | None = None) -> list[dict[str, Any]]:
    """For `hone render`: the children, given the FineTuneJobs it refers to (as they are or will be)."""
    return desired(msv, ftjs or {}, settings)[0]

