"""The emulated API server behaves like a real one where the operator relies on it."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from hone_operator.kube import Conflict, Kube, NotFound
from hone_dev.repo import load_sample
from hone_dev.apiserver import ApiServerThread, label_match
from hone_dev.cluster import wait_for

API = "hone.dev/v1alpha1"


def ftj(name: str = "a", ns: str = "ns", **labels: str) -> dict[str, Any]:
    obj = load_sample("finetunejob-minimal.yaml")
    obj["metadata"].update(name=name, namespace=ns, labels=labels or None)
    if not labels:
        obj["metadata"].pop("labels")
    return obj


def test_identity_fields_and_generation(kube: Kube) -> None:
    created = kube.create(ftj())
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    rv = int(meta["resourceVersion"])
    labelled = kube.patch(API, "FineTuneJob", "ns", "a", {"metadata": {"labels": {"x": "y"}}})
    assert labelled["metadata"]["generation"] == 1  # metadata is not spec
    assert int(labelled["metadata"]["resourceVersion"]) > rv
    changed = kube.patch(API, "FineTuneJob", "ns", "a", {"spec": {"suspend": True}})
    assert changed["metadata"]["generation"] == 2
    same = kube.patch(API, "FineTuneJob", "ns", "a", {"spec": {"suspend": True}})
    assert same["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]  # no-op


def test_conflicts(kube: Kube) -> None:
    created = kube.create(ftj())
    with pytest.raises(Conflict):
        kube.create(ftj())
    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"suspend": True}}
    assert created["metadata"]["resourceVersion"] != "1"
    with pytest.raises(Conflict):
        kube.patch(API, "FineTuneJob", "ns", "a", stale)
    fresh = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "spec": {"suspend": True}}
    assert kube.patch(API, "FineTuneJob", "ns", "a", fresh)["spec"]["suspend"] is True


def test_status_subresource_is_kept_apart(kube: Kube) -> None:
    body = ftj()
    body["status"] = {"phase": "Succeeded"}
    created = kube.create(body)
    assert "status" not in created  # status on create is dropped
    kube.patch(API, "FineTuneJob", "ns", "a", {"status": {"phase": "Running"}, "spec": {"suspend": True}})
    obj = kube.get(API, "FineTuneJob", "ns", "a")
    assert "status" not in obj and obj["spec"]["suspend"] is True
    kube.patch(API, "FineTuneJob", "ns", "a", {"status": {"phase": "Running"}, "spec": {"suspend": False}},
               subresource="status")
    obj = kube.get(API, "FineTuneJob", "ns", "a")
    assert obj["status"] == {"phase": "Running"} and obj["spec"]["suspend"] is True


def test_schema_prunes_unknown_fields_and_rejects_invalid_values(kube: Kube) -> None:
    body = ftj()
    body["spec"]["typo"] = 1
    body["spec"]["hyperparameters"] = {"epochs": 3, "learningRateMultplier": 2}
    created = kube.create(body)
    assert "typo" not in created["spec"] and created["spec"]["hyperparameters"] == {"epochs": 3}
    bad = ftj("b")
    bad["spec"]["resources"] = {"nodes": 0}
    with pytest.raises(ApiException) as info:
        kube.create(bad)
    assert info.value.status == 422
    causes = json.loads(info.value.body)["details"]["causes"]
    assert causes[0]["field"] == "spec.resources.nodes"
    # An invalid patch is refused and changes nothing.
    with pytest.raises(ApiException):
        kube.patch(API, "FineTuneJob", "ns", "a", {"spec": {"method": "magic"}})
    assert kube.get(API, "FineTuneJob", "ns", "a")["spec"].get("method") is None


def test_kopf_bookkeeping_survives_pruning(kube: Kube) -> None:
    kube.create(ftj())
    kube.patch(API, "FineTuneJob", "ns", "a", {"status": {"kopf": {"progress": {"h": {"retries": 1}}}}},
               subresource="status")
    assert kube.get(API, "FineTuneJob", "ns", "a")["status"]["kopf"] == {"progress": {"h": {"retries": 1}}}


def test_json_patch_with_test_operation(kube: Kube, apiserver: ApiServerThread) -> None:
    kube.create(ftj())
    url = f"{apiserver.url}/apis/hone.dev/v1alpha1/namespaces/ns/finetunejobs/a"

    def jpatch(ops: list[dict[str, Any]]) -> int:
        token = apiserver.call(lambda server: server.tokens.admin)
        req = urllib.request.Request(url, data=json.dumps(ops).encode(), method="PATCH",
                                     headers={"Content-Type": "application/json-patch+json",
                                              "Authorization": f"Bearer {token}"})
        try:
            return urllib.request.urlopen(req, context=apiserver.client_ssl()).status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert jpatch([{"op": "test", "path": "/metadata/name", "value": "a"},
                   {"op": "add", "path": "/metadata/finalizers", "value": ["hone.dev/finalizer"]}]) == 200
    assert jpatch([{"op": "test", "path": "/metadata/name", "value": "other"}]) == 422
    assert kube.get(API, "FineTuneJob", "ns", "a")["metadata"]["finalizers"] == ["hone.dev/finalizer"]


def test_finalizers_and_garbage_collection(kube: Kube) -> None:
    owner = kube.create(ftj())
    ref = {"apiVersion": API, "kind": "FineTuneJob", "name": "a", "uid": owner["metadata"]["uid"]}
    kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "child", "namespace": "ns", "ownerReferences": [ref]}})
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated", "namespace": "ns"}})
    kube.patch(API, "FineTuneJob", "ns", "a", {"metadata": {"finalizers": ["hone.dev/finalizer"]}})
    kube.delete(API, "FineTuneJob", "ns", "a")
    obj = kube.get(API, "FineTuneJob", "ns", "a")
    assert obj["metadata"]["deletionTimestamp"]  # held by the finalizer
    assert kube.get("v1", "ConfigMap", "ns", "child") is not None
    kube.patch(API, "FineTuneJob", "ns", "a", {"metadata": {"finalizers": None}})
    assert kube.get(API, "FineTuneJob", "ns", "a") is None
    assert kube.get("v1", "ConfigMap", "ns", "child") is None
    assert kube.get("v1", "ConfigMap", "ns", "unrelated") is not None


def test_label_selectors(kube: Kube) -> None:
    kube.create(ftj("a", team="x", tier="gold"))
    kube.create(ftj("b", team="y"))
    kube.create(ftj("c"))
    names = lambda sel: sorted(o["metadata"]["name"] for o in kube.list(API, "FineTuneJob", "ns", sel))  # noqa: E731
    assert names("team=x") == ["a"]
    assert names("team") == ["a", "b"]
    assert names("!team") == ["c"]
    assert names("team in (x,y),tier!=silver") == ["a", "b"]
    assert names("team notin (x)") == ["b", "c"]
    assert not label_match({"a": "1"}, "a=1,b=2")


def test_namespaces_are_isolated(kube: Kube) -> None:
    kube.create(ftj("a", "one"))
    kube.create(ftj("a", "two"))
    assert [o["metadata"]["namespace"] for o in kube.list(API, "FineTuneJob", "one")] == ["one"]
    body = ftj("c", "one")
    with pytest.raises(ApiException) as info:
        kube._call("POST", "/apis/hone.dev/v1alpha1/namespaces/two/finetunejobs", body=body)
    assert info.value.status == 400


def test_watch_resumes_from_a_resource_version(kube: Kube) -> None:
    first = kube.create(ftj("a"))
    kube.create(ftj("b"))
    kube.patch(API, "FineTuneJob", "ns", "a", {"spec": {"suspend": True}})
    api = client.CustomObjectsApi(kube.api)
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in watch.Watch().stream(
        api.list_namespaced_custom_object, "hone.dev", "v1alpha1", "ns", "finetunejobs",
        resource_version=first["metadata"]["resourceVersion"], timeout_seconds=1)]
    assert seen == [("ADDED", "b"), ("MODIFIED", "a")]


def test_watch_streams_live_events_with_selectors(kube: Kube, apiserver: ApiServerThread) -> None:
    api = client.CustomObjectsApi(kube.api)
    seen: list[tuple[str, str]] = []

    def consume() -> None:
        for e in watch.Watch().stream(api.list_namespaced_custom_object, "hone.dev", "v1alpha1", "ns",
                                      "finetunejobs", label_selector="team=x", timeout_seconds=2):
            seen.append((e["type"], e["object"]["metadata"]["name"]))

    since = apiserver.call(lambda server: len(server.audit))
    t = threading.Thread(target=consume)
    t.start()
    wait_for(lambda: apiserver.call(lambda server: any(a.verb == "watch" for a in server.audit[since:])),
             what="the watch registered")  # audited in the same step that registers its event queue
    kube.create(ftj("a", team="x"))
    kube.create(ftj("b", team="y"))
    kube.delete(API, "FineTuneJob", "ns", "a")
    t.join(5)
    assert seen == [("ADDED", "a"), ("DELETED", "a")]


def test_scale_subresource(kube: Kube) -> None:
    msv = load_sample("modelserving.yaml")
    msv["metadata"]["namespace"] = "ns"
    kube.create(msv)
    url = "/apis/hone.dev/v1alpha1/namespaces/ns/modelservings/support-assistant/scale"
    scale = kube._call("GET", url)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1
    kube._call("PATCH", url, body={"spec": {"replicas": 3}}, content_type="application/merge-patch+json")
    assert kube.get(API, "ModelServing", "ns", "support-assistant")["spec"]["replicas"] == 3


def test_not_found(kube: Kube) -> None:
    assert kube.get(API, "FineTuneJob", "ns", "nope") is None
    with pytest.raises(NotFound):
        kube.patch(API, "FineTuneJob", "ns", "nope", {"spec": {}})


def test_audit_records_every_write(kube: Kube, apiserver: ApiServerThread) -> None:
    kube.create(ftj())
    kube.patch(API, "FineTuneJob", "ns", "a", {"status": {"phase": "Running"}}, subresource="status")
    writes = apiserver.call(lambda s: [(w.verb, w.resource, w.subresource, w.name) for w in s.writes()])
    assert writes == [("create", "finetunejobs", None, "a"), ("patch", "finetunejobs", "status", "a")]


def test_watch_events_keep_the_object_as_it_was(kube: Kube, apiserver: ApiServerThread) -> None:
    """An event is a snapshot: a later status write must not change what an earlier event carries.

    (It did once: a status write shared the stored object's metadata and bumped its
    resourceVersion in place, so a watcher got ADDED with the newer version, cached that, and
    never saw the status change: an operator stalled when a Job finished before its create returned.)
    """
    created = kube.create(ftj())
    before = created["metadata"]["resourceVersion"]
    kube.patch(API, "FineTuneJob", "ns", "a", {"status": {"phase": "Running"}}, subresource="status")
    token = apiserver.call(lambda server: server.tokens.admin)
    since = int(before) - 1
    url = (f"{apiserver.url}/apis/hone.dev/v1alpha1/namespaces/ns/finetunejobs?watch=true&resourceVersion={since}"
           "&timeoutSeconds=1")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=apiserver.client_ssl(), timeout=10) as resp:
        events = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED"]
    added, modified = (e["object"] for e in events)
    assert added["metadata"]["resourceVersion"] == before and "status" not in added
    assert int(modified["metadata"]["resourceVersion"]) > int(before)
    assert modified["status"]["phase"] == "Running"
