"""Data stays in the cluster: the NetworkPolicies of training and serving pods allow exactly what they need."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hone_dev.repo import ROOT, load_sample
from hone_operator.api.v1alpha1 import FineTuneJob, ModelServing
from hone_operator.builders import finetunejob as ftj_build
from hone_operator.builders import modelserving as msv_build
from hone_operator.builders import network
from hone_operator.settings import OperatorSettings

K8S = "1.33"
NS = "team-a"
API_SERVER = "10.0.0.5/32"
MINIO = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}],
         "ports": [{"port": 9000, "protocol": "TCP"}]}
DNS = {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
       "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
INTERNET = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                                  "100.64.0.0/10", "169.254.0.0/16"]}}],
            "ports": [{"port": 443, "protocol": "TCP"}]}
MONITORING = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def settings(**network_settings: Any) -> OperatorSettings:
    return OperatorSettings(release_namespace="hone-system", release_name="hone",
                            quota_url="http://hone-quota.hone-system.svc:8082",
                            network={"apiServer": [API_SERVER], **network_settings})


def job(**spec: Any) -> FineTuneJob:
    body = yaml.safe_load((ROOT / "crds" / "samples" / "finetunejob-minimal.yaml").read_text())
    body["metadata"].update(namespace=NS, uid="0b5c8f3e-1111-2222-3333-444455556666")
    body["spec"].update(spec)
    return FineTuneJob.model_validate(body)


def policy_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    [policy] = [o for o in objs if o["kind"] == "NetworkPolicy"]
    kubernetes_validate.validate(policy, K8S, strict=True)
    return policy


def test_a_training_job_with_s3_data_and_a_pvc_output_reaches_exactly_what_it_needs() -> None:
    ftj = job(baseModel={"uri": "pvc://models/smollm2"},
              trainingData={"uri": "s3://acme-data/support/train.jsonl", "credentialsSecret": {"name": "s3"}},
              output={"uri": "pvc://hone-models/adapters"})
    policy = policy_of(ftj_build.all_objects(ftj, settings(egress=[MINIO])))
    own = {"podSelector": {"matchLabels": {"hone.dev/finetunejob": "support-assistant"}}}
    assert policy["metadata"]["name"] == "support-assistant-job-network"
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"  # deleted with the job
    assert policy["spec"] == {
        # Every pod of the job, the validation pod included.
        "podSelector": {"matchLabels": {"hone.dev/finetunejob": "support-assistant"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [own]},  # rendezvous and collectives between the job's pods
                    {"from": MONITORING, "ports": [{"port": 9090, "protocol": "TCP"}]}],  # /metrics
        "egress": [{"to": [own]}, DNS,
                   {"to": [{"ipBlock": {"cidr": API_SERVER}}],  # progress reports
                    "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]},
                   MINIO,  # the chart's object store
                   INTERNET],  # s3:// may be the public S3
    }
    # The same job with everything in the cluster (a PVC model, a ConfigMap of data) never leaves it.
    inside = policy_of(ftj_build.all_objects(job(baseModel={"uri": "pvc://models/smollm2"}), settings()))
    assert INTERNET not in inside["spec"]["egress"] and len(inside["spec"]["egress"]) == 3
    # A Hub model, an https:// file or an upload to hone api's S3 store is outside.
    for spec in ({"baseModel": {"uri": "HuggingFaceTB/SmolLM2-135M-Instruct"}},
                 {"baseModel": {"uri": "pvc://m/x"}, "trainingData": {"uri": "https://data.example/train.jsonl"}},
                 {"baseModel": {"uri": "pvc://m/x"}, "trainingData": {"file": "file-" + "a" * 24}}):
        got = policy_of(ftj_build.all_objects(job(**spec), settings(egress=[MINIO]).model_copy(
            update={"api_store": "s3://hone-api/store"})))
        assert got["spec"]["egress"][-1] == INTERNET, spec
    # Nothing without the setting, and no internet when the chart says [].
    assert not [o for o in ftj_build.all_objects(ftj, settings(enabled=False)) if o["kind"] == "NetworkPolicy"]
    assert INTERNET not in policy_of(ftj_build.all_objects(ftj, settings(internet=[])))["spec"]["egress"]


def test_api_server_ports_are_open_to_any_address_only_when_its_endpoints_are_unknown() -> None:
    unknown = OperatorSettings(network={"apiServer": []})
    egress = policy_of(ftj_build.all_objects(job(), unknown))["spec"]["egress"]
    assert {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]} in egress


def _succeeded(name: str) -> dict[str, Any]:
    body = copy.deepcopy(load_sample("finetunejob-minimal.yaml"))
    body["metadata"].update(name=name, namespace=NS, uid=f"uid-{name}")
    body["spec"]["baseModel"] = {"uri": "embedded://smollm2-135m-instruct"}
    body["status"] = {"phase": "Succeeded", "fineTunedModel": {
        "name": f"ft:smollm2:{NS}::{name}", "artifactUri": f"/var/run/hone/pvc/hone-models/adapters/{NS}/{name}/model"}}
    return body


def serving(**spec: Any) -> ModelServing:
    body = copy.deepcopy(load_sample("modelserving.yaml"))
    body["metadata"].update(namespace=NS, uid="msv-uid")
    body["spec"].update(spec)
    return ModelServing.model_validate(body)


def test_a_modelserving_answers_its_namespace_hone_api_and_whom_its_spec_names_only() -> None:
    ftjs = {"support-assistant": _succeeded("support-assistant")}
    partner = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "web"}},
               "podSelector": {"matchLabels": {"app": "storefront"}}}
    msv = serving(ingressFrom=[partner])
    policy = policy_of(msv_build.all_objects(msv, settings(), ftjs))
    port = [{"port": 8000, "protocol": "TCP"}]
    release = {"matchLabels": {"kubernetes.io/metadata.name": "hone-system"}}
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "ModelServing"
    assert policy["spec"] == {
        "podSelector": {"matchLabels": msv_build.selector_labels(msv)},  # the server pods
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {"from": [{"podSelector": {}}], "ports": port},  # its own namespace
            {"from": [{"namespaceSelector": release, "podSelector": {"matchLabels": {
                "app.kubernetes.io/instance": "hone", "app.kubernetes.io/component": "api"}}}], "ports": port},
            {"from": [*MONITORING, partner], "ports": port},  # Prometheus, and spec.ingressFrom
        ],
        "egress": [DNS,
                   {"to": [{"namespaceSelector": release, "podSelector": {"matchLabels": {
                       "app.kubernetes.io/instance": "hone", "app.kubernetes.io/component": "operator"}}}],
                    "ports": [{"port": 8082, "protocol": "TCP"}]}],  # usage reports to the quota endpoint
    }
    # An adapter on S3 is fetched from outside; a Hub base model too.
    remote = serving(adapters=[{"name": "v2", "uri": "s3://acme-models/hone/team-a/new/model"}])
    assert policy_of(msv_build.all_objects(remote, settings(), ftjs))["spec"]["egress"][-1] == INTERNET
    hub = serving(fineTuneJobRef=None, baseModel={"uri": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    assert policy_of(msv_build.all_objects(hub, settings(), {}))["spec"]["egress"][-1] == INTERNET


def test_a_job_and_a_modelserving_of_the_same_name_keep_their_own_policies() -> None:
    """hone api gives each job a ModelServing of the job's name (and users often do): one policy name for both
    made the server's policy replace the job's, leaving the job's pods unselected, so open to everything."""
    ftj = job()
    msv = serving()
    assert msv.metadata.name == ftj.metadata.name
    ftj_policy = policy_of(ftj_build.all_objects(ftj, settings()))
    msv_policy = policy_of(msv_build.all_objects(msv, settings(), {ftj.metadata.name: _succeeded(ftj.metadata.name)}))
    assert ftj_policy["metadata"]["name"] != msv_policy["metadata"]["name"]
    assert ftj_policy["spec"]["podSelector"] != msv_policy["spec"]["podSelector"]


def test_the_api_server_endpoints_are_read_once_and_a_failure_opens_only_its_ports(
        caplog: pytest.LogCaptureFixture) -> None:
    from kubernetes.client.exceptions import ApiException

    from hone_operator.main import api_server_cidrs

    class Endpoints:
        def __init__(self, answer: Any) -> None:
            self.answer = answer

        def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
            assert (api_version, kind, namespace, name) == ("v1", "Endpoints", "default", "kubernetes")
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

    found = {"subsets": [{"addresses": [{"ip": "10.0.0.5"}, {"ip": "10.0.0.6"}], "ports": [{"port": 6443}]},
                         {"addresses": [{"ip": "fd00::5"}]}]}
    assert api_server_cidrs(Endpoints(found)) == ["10.0.0.5/32", "10.0.0.6/32", "fd00::5/128"]
    assert api_server_cidrs(Endpoints(ApiException(status=403, reason="Forbidden"))) == []
    assert "set networkPolicy.workloads.apiServerCIDRs" in caplog.text
