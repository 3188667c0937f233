"""The operator's settings: one typed object, loaded once at start-up.

Values come from, in order of precedence: environment variables
(``HONE_<FIELD>``, nested with ``__``, e.g. ``HONE_PRICES__TRAINING=30``),
then a YAML file named by ``HONE_CONFIG_FILE`` (the Helm chart mounts one),
then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from hone_operator.api.v1alpha1.common import IPBlock, LabelSelector, NetworkPeer as Peer
from hone_operator.api.v1alpha1.tokenbudget import TokenBudgetSpec
from hone_operator.api.v1alpha1.finetunejob import DataScreeningSpec, ResourcesSpec
from hone_trainer import __version__
from hone_trainer.contract import PriceTable
from hone_trainer.contract.base import CamelModel


class PodResources(BaseModel):
    cpu: str = Field("4", description="CPU request and limit.")
    memory: str = Field("32Gi", description="Memory request and limit.")


class CatalogModel(BaseModel):
    """A base model the OpenAI-compatible API (``hone api``) fine-tunes when a client names it."""

    uri: str = Field(description="Where the model is: embedded://, hf://<id>, pvc://, s3:// or a local path.")
    revision: str | None = Field(None, description="Hub revision (a commit, tag or branch).")
    description: str | None = Field(None, description="Shown nowhere but here: what the entry is for.")
    method: Literal["lora", "qlora", "full"] = Field(
        "lora", description="How jobs made through `hone api` fine-tune it (qlora where only a 4-bit base fits).")
    resources: ResourcesSpec | None = Field(
        None, description="spec.resources of the FineTuneJobs `hone api` makes for it (GPUs per node, nodes, CPU, "
                          "memory, node selector, tolerations); none: the FineTuneJob's defaults (one GPU).")


#: The catalog without settings: the model embedded in the runtime package.
DEFAULT_CATALOG = {"smollm2-135m-instruct": CatalogModel(uri="embedded://smollm2-135m-instruct")}


class PolicyPort(CamelModel):
    port: int | str | None = None
    end_port: int | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class EgressRule(CamelModel):
    """A NetworkPolicy egress rule: where to (all if unset) and on which ports (all if unset)."""

    to: list[Peer] | None = None
    ports: list[PolicyPort] | None = None


#: Addresses that are not the public internet (private, carrier-grade NAT, link-local).
NOT_INTERNET = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"]


class WorkloadNetwork(CamelModel):
    """NetworkPolicies for the pods of FineTuneJobs and ModelServings, which hold the customer's data and weights:
    they reach only what this allows (builders/network.py says exactly what)."""

    enabled: bool = Field(True, description="Create a NetworkPolicy for each FineTuneJob's and ModelServing's pods.")
    api_server: list[str] = Field(
        default_factory=list,
        description="CIDRs of the Kubernetes API server as pods reach it (its endpoints, not the Service's "
                    "ClusterIP); training pods report progress there. Empty: read from the endpoints of the "
                    "`kubernetes` Service at start; if that fails, the API server ports are open to any address.")
    api_server_ports: list[int] = Field([443, 6443], description="Ports of the API server.")
    dns: list[Peer] = Field(
        default_factory=lambda: [Peer(namespace_selector=LabelSelector(),
                                      pod_selector=LabelSelector(match_labels={"k8s-app": "kube-dns"}))],
        description="The cluster DNS (port 53): by default pods labelled k8s-app=kube-dns, as CoreDNS is.")
    egress: list[EgressRule] = Field(
        default_factory=list,
        description="Egress every such pod may also use: the object store, a model mirror, a proxy.")
    internet: list[EgressRule] = Field(
        default_factory=lambda: [EgressRule(to=[Peer(ip_block=IPBlock(cidr="0.0.0.0/0", except_=NOT_INTERNET))],
                                            ports=[PolicyPort(port=443)])],
        description="Egress added for pods whose base model is on the Hugging Face Hub (hf:// or org/name) or "
                    "whose data is an http(s):// URL: by default HTTPS to public addresses. [] keeps them in.")
    monitoring: list[Peer] = Field(
        default_factory=lambda: [Peer(namespace_selector=LabelSelector(
            match_labels={"kubernetes.io/metadata.name": "monitoring"}))],
        description="Who may scrape the pods' metrics ports (Prometheus): by default the namespace monitoring. "
                    "A server's metrics share its API port.")
    serving_ingress: list[Peer] = Field(
        default_factory=list,
        description="Who else may call every ModelServing (e.g. an ingress controller's namespace), besides its "
                    "own namespace, hone api and what its spec.ingressFrom adds.")


class OperatorSettings(BaseSettings):
    """Every knob of the operator, each with a documented default."""

    model_config = SettingsConfigDict(env_prefix="HONE_", env_nested_delimiter="__", extra="forbid")

    runtime_image: str = Field(
        f"ghcr.io/hone-dev/hone-runtime:{__version__}",
        description="Image of the trainer/validator/server (torch + DeepSpeed).",
    )
    vllm_image: str = Field(
        "vllm/vllm-openai:v0.11.0", description="Image of ModelServings with runtime: vllm (GPU)."
    )
    image_pull_policy: str = Field("IfNotPresent", description="Pull policy of the runtime image.")
    watch_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces to watch; empty watches the whole cluster.",
    )
    health_port: int = Field(8081, ge=0, le=65535, description="Port of /healthz (liveness); 0 turns it off.")
    metrics_port: int = Field(8080, ge=0, le=65535, description="Port of /metrics; 0 turns it off.")
    quota_port: int = Field(
        8082, ge=0, le=65535,
        description="Port where the leader answers serving pods' usage reports and grants them inference tokens "
                    "under their namespace's TokenBudget; 0 turns it off.")
    quota_url: str | None = Field(
        None, description="The URL serving pods report to (the operator's quota Service, e.g. "
                          "http://hone-operator-quota.hone-system.svc:8082); none: serving pods enforce no "
                          "inference budget and report to nobody.")
    quota_report_seconds: float = Field(
        1.0, gt=0, le=60, description="How often a busy serving pod reports the tokens it served.")
    prices: PriceTable = Field(default_factory=PriceTable, description="USD per 1M tokens.")
    model_prices: dict[str, PriceTable] = Field(
        default_factory=dict,
        description="Prices per base model, by the URI a FineTuneJob's or ModelServing's spec.baseModel.uri gives "
                    "(hf:// may be left out); other models use prices.")
    training_resources: PodResources = Field(
        default_factory=lambda: PodResources(cpu="8", memory="64Gi"),
        description="Default CPU/memory of a training pod when the FineTuneJob sets none.",
    )
    training_gpu_memory: str | None = Field(
        None,
        description="Memory of one GPU of the training nodes (e.g. 80Gi), for FineTuneJobs that set no "
                    "resources.gpuMemory: a job whose memory estimate exceeds it is held before its pods are "
                    "created. Empty: GPU memory is estimated but not checked.",
    )
    validation_resources: PodResources = Field(
        default_factory=lambda: PodResources(cpu="2", memory="4Gi"),
        description="CPU/memory of the ValidatingFiles pod.",
    )
    serving_resources: PodResources = Field(
        default_factory=lambda: PodResources(cpu="2", memory="8Gi"),
        description="Default CPU/memory of an inference pod when the ModelServing sets none.",
    )
    serving_graceful_seconds: int = Field(
        30, ge=0, le=3600, description="How long an inference pod may finish in-flight requests when stopped."
    )
    shared_memory: str = Field("8Gi", description="Default size of /dev/shm in training pods.")
    backoff_limit: int = Field(
        3, ge=0, description="Retries of a training Job after crashes (preemption never counts)."
    )
    validation_backoff_limit: int = Field(1, ge=0, description="Retries of a validation Job.")
    rendezvous_port: int = Field(29400, description="torchrun c10d rendezvous port (multi-node).")
    trainer_metrics_port: int = Field(9090, description="Port of the trainer's /metrics.")
    progress_interval_seconds: float = Field(15.0, gt=0, description="How often the trainer reports progress.")
    run_as_user: int = Field(10001, ge=1, description="Non-root UID (and GID) of every pod Hone creates; above 10000 to stay clear of host users.")
    watch_server_timeout: int = Field(300, description="Server-side timeout of watch requests (s).")
    watch_client_timeout: int = Field(330, description="Client-side timeout of watch requests (s).")
    reconcile_workers: int = Field(8, ge=1, le=128, description="Parallel reconciles.")
    retry_delay_seconds: float = Field(10.0, gt=0, description="Delay before retrying a failed reconcile.")
    leader_election: bool = Field(
        False, description="Reconcile only while holding a coordination.k8s.io Lease (for several replicas)."
    )
    lease_name: str = Field("hone-operator", description="Name of the leader-election Lease.")
    lease_namespace: str | None = Field(
        None, description="Namespace of the Lease; default: the operator's own (POD_NAMESPACE)."
    )
    lease_duration_seconds: int = Field(
        15, ge=5, le=300, description="A leader unseen for this long is replaced."
    )
    catalog: dict[str, CatalogModel] = Field(
        default_factory=lambda: dict(DEFAULT_CATALOG),
        description="Base models by the name an OpenAI client gives as `model` (hone api).")
    api_store: str | None = Field(
        None, pattern=r"^s3://[^/]+", description="Where `hone api` in a cluster keeps the bytes of uploaded files "
        "(<api_store>/files/<namespace>/) and where the jobs it creates publish (<api_store>/models/<namespace>/): "
        "s3://bucket/prefix. The cluster mode needs it; local mode keeps both in its workdir.")
    api_store_secret: str = Field(
        "hone-api-store", description="The Secret, in each namespace whose jobs are made through `hone api`, with "
        "the credentials of api_store (keys access-key-id, secret-access-key, and endpoint-url, region where "
        "needed) that the job's training and serving pods mount to read the data and publish the model.")
    api_serve_fine_tunes: bool = Field(
        True, description="Give each job made through `hone api` a ModelServing of the same name (owned by the "
        "job), so that its fine-tuned model answers chat completions once it succeeds, as on OpenAI.")
    default_budget: TokenBudgetSpec | None = Field(
        default_factory=TokenBudgetSpec,
        description="The TokenBudget (spec) the operator creates, named default, in a namespace that has none when "
                    "its first FineTuneJob is admitted: by default 1M free training tokens a day and no limits. "
                    "null: namespaces without a TokenBudget are metered only.")
    data_screening: DataScreeningSpec = Field(
        default_factory=DataScreeningSpec,
        description="Data screening of FineTuneJobs that set no spec.dataScreening: by default personal data "
                    "(emails, phone numbers, payment cards, IBANs) is reported in status.dataset.screening.")
    kueue_enabled: bool = Field(
        True, description="Honour kueue.x-k8s.io/queue-name labels (create Jobs suspended for Kueue)."
    )
    network: WorkloadNetwork = Field(default_factory=WorkloadNetwork,
                                     description="NetworkPolicies for training and serving pods.")
    release_namespace: str | None = Field(
        None, description="The namespace of the operator and hone api (default: POD_NAMESPACE): serving pods "
                          "accept hone api's requests and report usage to the operator there.")
    release_name: str = Field("hone", description="The Helm release (app.kubernetes.io/instance of its pods).")

    def prices_for(self, base_model_uri: str) -> PriceTable:
        """The price table of a base model: its entry in model_prices, else prices."""
        uri = base_model_uri.removeprefix("hf://")
        for key, table in self.model_prices.items():
            if key.removeprefix("hf://") == uri:
                return table
        return self.prices

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls))


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by HONE_CONFIG_FILE (snake_case or camelCase keys)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("HONE_CONFIG_FILE")
        if not path:
            return {}
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        return {_snake(k): v for k, v in data.items()}


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def load() -> OperatorSettings:
    return OperatorSettings()
