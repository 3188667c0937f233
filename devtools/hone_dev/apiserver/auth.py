"""Authentication (bearer tokens) and RBAC authorization, evaluated as kube-apiserver evaluates them.

* Tokens: an admin token (``system:masters``) written into the admin kubeconfig, and
  ServiceAccount tokens issued by TokenRequest (``serviceaccounts/<name>/token``, what a
  projected volume gives a pod), valid while that ServiceAccount exists. Any other request
  gets 401 Unauthorized.
* RBAC from the Role, ClusterRole, RoleBinding and ClusterRoleBinding objects stored in the
  server (no aggregation), with the bootstrap roles every cluster has (``cluster-admin``,
  ``system:discovery``, ``system:basic-user``, ``system:public-info-viewer``). A denied request
  gets 403 with kube-apiserver's message, e.g. ``User "system:serviceaccount:ns:sa" cannot patch
  resource "finetunejobs/status" in API group "hone.dev" in the namespace "team-a"``.
* Escalation prevention: a Role or ClusterRole can be written only by someone who holds every
  permission it grants (or may ``escalate``), a binding only by someone who holds the bound
  role's permissions (or may ``bind`` it): so the operator can grant its trainers only what it
  has itself, as on a real cluster.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from typing import Any, Iterable

from hone_dev.apiserver.kinds import ApiError

RBAC = "rbac.authorization.k8s.io"
AUTHENTICATED = "system:authenticated"
MASTERS = "system:masters"
ADMIN = "kubernetes-admin"


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""

    def info(self) -> dict[str, Any]:
        return {"username": self.name, "uid": self.uid, "groups": list(self.groups)}


@dataclasses.dataclass(frozen=True)
class Attributes:
    """What a request asks to do (authorizer.Attributes in kube-apiserver)."""
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""  # for non-resource requests

    @property
    def is_resource(self) -> bool:
        return bool(self.resource)


def service_account_user(namespace: str, name: str, uid: str = "") -> User:
    return User(f"system:serviceaccount:{namespace}:{name}",
                ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED), uid)


BOOTSTRAP_CLUSTER_ROLES = [
    {"metadata": {"name": "cluster-admin"}, "rules": [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]},
    {"metadata": {"name": "system:discovery"}, "rules": [
        {"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
                             "/readyz", "/version", "/version/"], "verbs": ["get"]}]},
    {"metadata": {"name": "system:public-info-viewer"}, "rules": [
        {"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]},
    {"metadata": {"name": "system:basic-user"}, "rules": [
        {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
         "verbs": ["create"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]},
]
BOOTSTRAP_BINDINGS = [
    {"metadata": {"name": "cluster-admin"}, "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
     "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": MASTERS}]},
] + [{"metadata": {"name": name}, "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
      "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": AUTHENTICATED}]}
     for name in ("system:discovery", "system:public-info-viewer", "system:basic-user")]


def _has(values: Iterable[str], want: str) -> bool:
    values = list(values or [])
    return "*" in values or want in values


def _resource_matches(resources: Iterable[str], resource: str, subresource: str) -> bool:
    full = f"{resource}/{subresource}" if subresource else resource
    for r in resources or []:
        if r in ("*", full) or (subresource and r == f"*/{subresource}") or (not subresource and r == resource):
            return True
    return False


def rule_allows(rule: dict[str, Any], attrs: Attributes) -> bool:
    if not _has(rule.get("verbs"), attrs.verb):
        return False
    if not attrs.is_resource:
        return any(u in (attrs.path, "*") or (u.endswith("*") and attrs.path.startswith(u[:-1]))
                   for u in rule.get("nonResourceURLs") or [])
    if not _has(rule.get("apiGroups"), attrs.group):
        return False
    if not _resource_matches(rule.get("resources"), attrs.resource, attrs.subresource):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def _subject_matches(subject: dict[str, Any], user: User, binding_namespace: str | None) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return subject.get("name") == user.name
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_namespace
        return user.name == f"system:serviceaccount:{ns}:{subject.get('name')}"
    return False


class Authorizer:
    """RBAC over a store lookup: ``objects(plural, namespace)`` returns the stored RBAC objects."""

    def __init__(self, objects):
        self.objects = objects

    def rules_for(self, user: User, namespace: str | None) -> list[dict[str, Any]]:
        """Every rule that applies to user in namespace (cluster-wide ones included)."""
        cluster_roles = {o["metadata"]["name"]: o for o in self.objects("clusterroles", None)}
        rules: list[dict[str, Any]] = []
        for binding in self.objects("clusterrolebindings", None):
            if any(_subject_matches(s, user, None) for s in binding.get("subjects") or []):
                role = cluster_roles.get(binding.get("roleRef", {}).get("name"))
                rules.extend((role or {}).get("rules") or [])
        if namespace:
            roles = {o["metadata"]["name"]: o for o in self.objects("roles", namespace)}
            for binding in self.objects("rolebindings", namespace):
                if any(_subject_matches(s, user, namespace) for s in binding.get("subjects") or []):
                    ref = binding.get("roleRef") or {}
                    role = (cluster_roles if ref.get("kind") == "ClusterRole" else roles).get(ref.get("name"))
                    rules.extend((role or {}).get("rules") or [])
        return rules

    def allowed(self, user: User, attrs: Attributes) -> bool:
        if MASTERS in user.groups:
            return True
        return any(rule_allows(rule, attrs) for rule in self.rules_for(user, attrs.namespace or None))

    def check(self, user: User, attrs: Attributes, qualified: str) -> None:
        if not self.allowed(user, attrs):
            raise forbidden(user, attrs, qualified)

    def covers(self, user: User, namespace: str | None, rules: Iterable[dict[str, Any]]) -> list[str]:
        """The permissions in ``rules`` that user does not hold, as kube-apiserver lists them (empty: it may grant them)."""
        if MASTERS in user.groups:
            return []
        held = self.rules_for(user, namespace)
        missing = []
        for rule in rules:
            for verb in rule.get("verbs") or []:
                for url in rule.get("nonResourceURLs") or []:
                    if not any(rule_allows(h, Attributes(verb=verb, path=url)) for h in held):
                        missing.append(f"{{NonResourceURLs:[{json.dumps(url)}], Verbs:[{json.dumps(verb)}]}}")
                for group in rule.get("apiGroups") or []:
                    for resource in rule.get("resources") or []:
                        for name in rule.get("resourceNames") or [""]:
                            # A granted "*" is matched only by a held "*", as the literal it is.
                            plural, _, sub = resource.partition("/")
                            wanted = Attributes(verb=verb, group=group, resource=plural, subresource=sub, name=name)
                            if not any(rule_allows(h, wanted) for h in held):
                                names = f", ResourceNames:[{json.dumps(name)}]" if name else ""
                                missing.append(f"{{APIGroups:[{json.dumps(group)}], Resources:[{json.dumps(resource)}]"
                                               f"{names}, Verbs:[{json.dumps(verb)}]}}")
        return missing


def forbidden(user: User, attrs: Attributes, qualified: str) -> ApiError:
    if not attrs.is_resource:
        return ApiError(403, "Forbidden", f'forbidden: User "{user.name}" cannot {attrs.verb} path "{attrs.path}"')
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    subject = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    message = (f'{subject} is forbidden: User "{user.name}" cannot {attrs.verb} resource "{resource}" '
               f'in API group "{attrs.group}" {scope}')
    details: dict[str, Any] = {"group": attrs.group, "kind": attrs.resource}
    if attrs.name:
        details["name"] = attrs.name
    return ApiError(403, "Forbidden", message, details)


class Tokens:
    """Bearer tokens: the admin's, and those TokenRequest issues for ServiceAccounts."""

    def __init__(self) -> None:
        self.admin = secrets.token_urlsafe(24)
        self._service_accounts: dict[str, tuple[str, str, str]] = {}  # token -> (namespace, name, uid)

    def issue(self, namespace: str, name: str, uid: str) -> str:
        token = "sa-" + secrets.token_urlsafe(24)
        self._service_accounts[token] = (namespace, name, uid)
        return token

    def user(self, header: str | None, service_account_uid) -> User | None:
        """The user a request's Authorization header authenticates, or None (401)."""
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 7235); in-cluster clients send "bearer"
            return None
        token = token.strip()
        if secrets.compare_digest(token, self.admin):
            return User(ADMIN, (MASTERS, AUTHENTICATED))
        found = self._service_accounts.get(token)
        if found is None:
            return None
        namespace, name, uid = found
        if service_account_uid(namespace, name) != uid:  # deleted (or recreated) since: the token is void
            return None
        return service_account_user(namespace, name, uid)


UNAUTHORIZED = ApiError(401, "Unauthorized", "Unauthorized")
