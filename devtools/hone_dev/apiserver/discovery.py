"""``/version`` and API discovery, legacy and aggregated (``apidiscovery.k8s.io/v2``), as kubectl 1.32 asks.

Subresources are listed the way kube-apiserver lists them: in aggregated discovery nested under
their resource, in legacy discovery as ``plural/sub`` entries with no short names or categories
(so ``kubectl get ftj`` matches one resource, not its status too).
"""

from __future__ import annotations

from typing import Any, Iterable

from hone_dev.apiserver.kinds import Kind

#: The Kubernetes version the emulator answers as (inside kubectl 1.32's skew).
VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0+hone-emulated", "gitCommit": "", "gitTreeState": "clean",
           "buildDate": "2026-12-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc", "platform": "linux/amd64"}

AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def wants_aggregated(accept: str) -> bool:
    """Whether the client's Accept puts aggregated discovery v2 first (kubectl and client-go 1.30+ do)."""
    first = accept.split(",")[0].replace(" ", "")
    return "as=APIGroupDiscoveryList" in first and "v=v2;" in first + ";"


def _subresources(kind: Kind) -> list[tuple[str, str, str, list[str]]]:
    """(subresource, responseKind group, kind, verbs)."""
    out = []
    if kind.status:
        out.append(("status", kind.group, kind.kind, ["get", "patch", "update"]))
    if kind.scale:
        out.append(("scale", "autoscaling", "Scale", ["get", "patch", "update"]))
    return out


def _verbs(kind: Kind) -> list[str]:
    return list(kind.verbs) if kind.verbs is not None else VERBS


def resource_list(kinds: Iterable[Kind], group_version: str) -> dict[str, Any]:
    """Legacy discovery: ``/api/v1`` or ``/apis/<group>/<version>`` as an APIResourceList."""
    resources = []
    for kind in kinds:
        entry = {"name": kind.plural, "singularName": kind.kind.lower(), "namespaced": kind.namespaced,
                 "kind": kind.kind, "verbs": _verbs(kind)}
        if kind.short_names:
            entry["shortNames"] = list(kind.short_names)
        if kind.categories:
            entry["categories"] = list(kind.categories)
        resources.append(entry)
        for sub, group, sub_kind, verbs in _subresources(kind):
            resources.append({"name": f"{kind.plural}/{sub}", "singularName": "", "namespaced": kind.namespaced,
                              "kind": sub_kind, "verbs": verbs, **({"group": group, "version": "v1"}
                                                                   if sub == "scale" else {})})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def group_list(kinds: Iterable[Kind]) -> dict[str, Any]:
    """Legacy ``/apis``: every group but the core one, with its versions."""
    groups: dict[str, list[str]] = {}
    for kind in kinds:
        if kind.group and kind.version not in groups.setdefault(kind.group, []):
            groups[kind.group].append(kind.version)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(g, vs) for g, vs in sorted(groups.items())]}


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": listed, "preferredVersion": listed[0]}


def core_versions() -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}


def aggregated(kinds: Iterable[Kind], core: bool) -> dict[str, Any]:
    """Aggregated discovery v2: ``/api`` (core only) or ``/apis`` (every other group)."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for kind in kinds:
        if bool(kind.group) == core:
            continue
        resource: dict[str, Any] = {
            "resource": kind.plural, "singularResource": kind.kind.lower(),
            "responseKind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
            "scope": "Namespaced" if kind.namespaced else "Cluster", "verbs": _verbs(kind)}
        if kind.short_names:
            resource["shortNames"] = list(kind.short_names)
        if kind.categories:
            resource["categories"] = list(kind.categories)
        subs = [{"subresource": sub, "responseKind": {"group": group, "version": "v1" if sub == "scale" else kind.version,
                                                      "kind": sub_kind}, "verbs": verbs}
                for sub, group, sub_kind, verbs in _subresources(kind)]
        if subs:
            resource["subresources"] = subs
        groups.setdefault(kind.group, {}).setdefault(kind.version, []).append(resource)
    items = [{"metadata": {"name": group, "creationTimestamp": None},
              "versions": [{"version": v, "resources": rs, "freshness": "Current"} for v, rs in versions.items()]}
             for group, versions in sorted(groups.items())]
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}
