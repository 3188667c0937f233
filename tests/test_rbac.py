"""The chart's RBAC is exactly what the operator uses: every API call it makes in a full
lifecycle is allowed by the chart's rules, and every verb in the rules is used.

The operator runs with the chart's ServiceAccount, roles and bindings, enforced by the emulated
API server (as in every operator test), so a missing rule already fails the lifecycle; this
test also fails on a rule the operator never uses.

The calls come from the emulated API server's audit log (user agents of the operator's own
client and of kopf) while the real operator takes FineTuneJobs and a ModelServing through
their lifecycles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hone_operator.kube import USER_AGENT, Kube
from hone_dev.apiserver import ApiServerThread
from hone_dev.cluster import OperatorProcess, get_job, set_job_status, wait_for, wait_phase
from hone_dev.repo import CHART, render
from hone_dev.resources import NS, apply, handled, patch_spec, validate_ok
from hone_dev.resources import API, serving_ready

#: Verbs only needed on paths a normal lifecycle does not take, with the reason.
RARE = {
    ("batch", "jobs", "get"): "adopting the Job after a create conflict (an operator restarted mid-create)",
    ("hone.dev", "finetunejobs/status", "get"): "granted to each trainer by a Role the operator creates: "
                                                "RBAC lets the operator grant only what it holds",
    ("hone.dev", "finetunejobs", "get"): "a budget reservation of a job deleted while the operator was away",
    # Both used, with this chart's RBAC, by tests/test_inference_budget.py: serving pods reporting usage.
    ("authentication.k8s.io", "tokenreviews", "create"): "the quota endpoint checks a serving pod's token",
    ("", "pods", "get"): "the quota endpoint checks the reporting pod; a gone pod's budget record is retired",
    ("apps", "deployments", "delete"): "a ModelServing stops serving a FineTuneJob whose safety check failed when "
                                       "the override is taken back (tests/test_serving_operator.py)",
}


def _needed(apiserver: ApiServerThread) -> set[tuple[str, str, str]]:
    def calls(server: Any) -> list[Any]:
        return [a for a in server.audit if USER_AGENT in a.user_agent or "kopf" in a.user_agent.lower()]

    out = set()
    for a in apiserver.call(calls):
        resource = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
        out.add((a.group, resource, a.verb))
    return out


def _allowed(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_chart_rbac_is_exactly_what_the_operator_uses(kube: Kube, kubeconfig: Path, apiserver: ApiServerThread,
                                                     tmp_path: Path, mode: str) -> None:
    env = {"HONE_WATCH_NAMESPACES": json.dumps([NS, "team-b"])} if mode == "namespaced" else {}
    for ns in (NS, "team-b"):  # an admin makes the namespaces before installing the operator into them
        apiserver.call(lambda server: server.make_namespace(ns))
    operator = OperatorProcess(apiserver, tmp_path / "operator.log", env).start()
    try:
        _lifecycle(kube)
    finally:
        operator.stop()
    needed = _needed(apiserver)
    values = CHART / "ci" / "namespaced-values.yaml" if mode == "namespaced" else None
    objs = render(values)
    rules = [r for o in objs if o["kind"] in ("ClusterRole", "Role") and not o["metadata"]["name"].endswith("-leader")
             and o["metadata"].get("namespace") in (None, NS) for r in o["rules"]]
    allowed = _allowed(rules)
    assert not needed - allowed, f"the operator made calls its chart RBAC does not allow: {sorted(needed - allowed)}"
    unused = allowed - needed - set(RARE)
    assert not unused, f"chart RBAC grants verbs the operator never uses: {sorted(unused)}"


def _lifecycle(kube: Kube) -> None:
    # A FineTuneJob to Succeeded, served with autoscaling switched on, changed and off.
    serving_ready(kube)
    kube.patch(API, "ModelServing", NS, "support-assistant",
               {"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}})
    wait_for(lambda: kube.get("autoscaling/v2", "HorizontalPodAutoscaler", NS, "support-assistant"), what="HPA")
    kube.patch(API, "ModelServing", NS, "support-assistant", {"spec": {"autoscaling": {"maxReplicas": 4}}})
    wait_for(lambda: kube.get("autoscaling/v2", "HorizontalPodAutoscaler", NS, "support-assistant")["spec"]
             ["maxReplicas"] == 4, what="HPA updated")
    kube.patch(API, "ModelServing", NS, "support-assistant", {"spec": {"autoscaling": None}})
    wait_for(lambda: kube.get("autoscaling/v2", "HorizontalPodAutoscaler", NS, "support-assistant") is None,
             what="HPA removed")
    # A second job suspended, then cancelled.
    apply(kube, name="second")
    validate_ok(kube, "second")
    set_job_status(kube, NS, "second-train", active=1, ready=1)
    wait_phase(kube, NS, "second", "Running")
    patch_spec(kube, name="second", suspend=True)
    wait_phase(kube, NS, "second", "Suspended")
    patch_spec(kube, name="second", cancel=True)
    wait_phase(kube, NS, "second", "Cancelled")
    wait_for(lambda: get_job(kube, NS, "second-train") is None, what="Job deleted")
    handled(kube, name="second")  # every call the changes above led to has been made
    handled(kube, "ModelServing", "support-assistant")


def test_leader_election_rbac_is_only_its_lease() -> None:
    objs = render(CHART / "ci" / "kueue-ha-values.yaml")
    role = next(o for o in objs if o["kind"] == "Role" and o["metadata"]["name"].endswith("-leader"))
    assert role["metadata"]["namespace"] == "hone-system"
    assert _allowed(role["rules"]) == {("coordination.k8s.io", "leases", v) for v in ("create", "get", "update")}
    assert role["rules"][1]["resourceNames"] == ["hone"]  # get/update only its own Lease
