"""NetworkPolicies for the pods that hold a customer's data and weights: a FineTuneJob's and a ModelServing's.

OpenAI's process sends the training data to OpenAI; Hone's point is that it stays in the cluster. The
operator creates one NetworkPolicy per FineTuneJob (every pod of the job: validation and training) and one
per ModelServing (its server pods), owned by the object, so that what those pods can reach is exactly:

FineTuneJob pods
    in: the job's own pods (torchrun's rendezvous and the collectives between nodes, any port), and
    ``network.monitoring`` on the trainer's metrics port;
    out: the job's own pods, the cluster DNS (``network.dns``, port 53), the API server (``network.apiServer``
    on ``network.apiServerPorts``: the trainer reports progress), ``network.egress`` (the object store, a
    mirror), and ``network.internet`` only when the job names a location outside the cluster: a Hub model,
    an ``http(s)://`` or ``s3://`` location.

ModelServing pods
    in: on the server's port only, from pods of the same namespace, from ``hone api`` (the release's
    namespace), from ``network.monitoring`` (a server's metrics share its port), from
    ``network.servingIngress`` and from the ModelServing's own ``spec.ingressFrom``;
    out: DNS, the operator's quota endpoint (when inference budgets are on), ``network.egress``, and
    ``network.internet`` only for a Hub base model or an ``s3://`` model or adapter.

A policy only allows; Kubernetes unions every policy that selects a pod, so a namespace's own policies can
open more, and none of these opens anything to another namespace's data. Without a NetworkPolicy
provider (a CNI that enforces them) they are inert objects.
"""

from __future__ import annotations

import os
from typing import Any

from hone_operator.api.v1alpha1 import FineTuneJob, ModelServing, uri_scheme
from hone_operator.builders import common
from hone_operator.settings import OperatorSettings

API_VERSION = "networking.k8s.io/v1"
#: Locations whose scheme means a host outside the cluster (an in-cluster object store is network.egress).
REMOTE_SCHEMES = ("hf", "http", "https", "s3")


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def remote(location: str | None) -> bool:
    """Whether a model or data location is reached over the network outside the cluster (a mounted path,
    ``pvc://``, ``file://``, ``embedded://`` and inline data are not)."""
    if not location or location.startswith("/"):
        return False
    return uri_scheme(location) in REMOTE_SCHEMES


def release_namespace(settings: OperatorSettings) -> str:
    return settings.release_namespace or os.environ.get("POD_NAMESPACE") or "hone-system"


def _dns(settings: OperatorSettings) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    if settings.network.dns:
        rule["to"] = [_dump(p) for p in settings.network.dns]
    return rule


def _api_server(settings: OperatorSettings) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [{"port": p, "protocol": "TCP"} for p in settings.network.api_server_ports]}
    if settings.network.api_server:  # else: these ports to any address (the endpoints could not be found)
        rule["to"] = [{"ipBlock": {"cidr": cidr}} for cidr in settings.network.api_server]
    return rule


def _outside(settings: OperatorSettings, locations: list[str | None]) -> list[dict[str, Any]]:
    """``network.egress``, and ``network.internet`` when a location is outside the cluster."""
    rules = [_dump(r) for r in settings.network.egress]
    if any(remote(loc) for loc in locations):
        rules += [_dump(r) for r in settings.network.internet]
    return rules


def _policy(name: str, namespace: str, labels: dict[str, str], owner: dict[str, Any], pods: dict[str, str],
            ingress: list[dict[str, Any]], egress: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": "NetworkPolicy",
        "metadata": common.metadata(name, namespace, labels, owner),
        "spec": {"podSelector": {"matchLabels": pods}, "policyTypes": ["Ingress", "Egress"],
                 "ingress": ingress, "egress": egress},
    }


def job_locations(ftj: FineTuneJob, settings: OperatorSettings) -> list[str | None]:
    """Every place a FineTuneJob's pods read or write: base model, data (an uploaded file lies in hone api's
    store), output."""
    spec = ftj.spec
    out: list[str | None] = [spec.baseModel.uri, spec.output.uri]
    for data in (spec.trainingData, spec.validationData):
        if data is not None:
            out.append(settings.api_store if data.file else data.uri)
    return out


def finetunejob_policy(ftj: FineTuneJob, settings: OperatorSettings) -> dict[str, Any] | None:
    """The job's NetworkPolicy (None when ``network.enabled`` is off)."""
    from hone_operator.builders import finetunejob as ftj_build

    if not settings.network.enabled:
        return None
    name = ftj.metadata.name
    own = {common.FINETUNEJOB_LABEL: ftj_build.labels(ftj, "network")[common.FINETUNEJOB_LABEL]}
    ingress: list[dict[str, Any]] = [{"from": [{"podSelector": {"matchLabels": own}}]}]
    if settings.network.monitoring:
        ingress.append({"from": [_dump(p) for p in settings.network.monitoring],
                        "ports": [{"port": settings.trainer_metrics_port, "protocol": "TCP"}]})
    egress = [{"to": [{"podSelector": {"matchLabels": own}}]}, _dns(settings), _api_server(settings),
              *_outside(settings, job_locations(ftj, settings))]
    return _policy(ftj_build.Names.of(name).network, ftj.metadata.namespace or "default",
                   ftj_build.labels(ftj, "network"), ftj_build.owner(ftj), own, ingress, egress)


def modelserving_policy(msv: ModelServing, settings: OperatorSettings, locations: list[str | None],
                        port: int) -> dict[str, Any] | None:
    """The ModelServing's NetworkPolicy; ``locations``: the base model and adapters as resolved, ``port``: the
    server's (None when ``network.enabled`` is off)."""
    from hone_operator.builders import modelserving as msv_build

    if not settings.network.enabled:
        return None
    net = settings.network
    release = release_namespace(settings)
    served = [{"port": port, "protocol": "TCP"}]
    in_release = {"matchLabels": {"kubernetes.io/metadata.name": release}}
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {}}], "ports": served},  # the ModelServing's own namespace
        {"from": [{"namespaceSelector": in_release, "podSelector": {"matchLabels": {
            "app.kubernetes.io/instance": settings.release_name, common.COMPONENT_LABEL: "api"}}}],
         "ports": served},
    ]
    others = [*net.monitoring, *net.serving_ingress, *(msv.spec.ingressFrom or [])]
    if others:
        ingress.append({"from": [_dump(p) for p in others], "ports": served})
    egress = [_dns(settings)]
    if settings.quota_url and settings.quota_port:
        egress.append({"to": [{"namespaceSelector": in_release, "podSelector": {"matchLabels": {
            "app.kubernetes.io/instance": settings.release_name, common.COMPONENT_LABEL: "operator"}}}],
            "ports": [{"port": settings.quota_port, "protocol": "TCP"}]})
    egress += _outside(settings, locations)
    return _policy(msv_build.Names.of(msv.metadata.name).network, msv.metadata.namespace or "default",
                   msv_build.labels(msv, "network"), msv_build.owner(msv), msv_build.selector_labels(msv),
                   ingress, egress)
