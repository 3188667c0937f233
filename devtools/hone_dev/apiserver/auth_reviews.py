"""The review kinds (answered at once, never stored) and TokenRequest: what ``kubectl auth can-i``,
``kubectl auth whoami``, ``kubectl create token`` and a pod's projected token use."""

from __future__ import annotations

import datetime
from typing import Any

from hone_dev.apiserver import auth
from hone_dev.apiserver.kinds import ApiError, Kind

AUTHZ, AUTHN = "authorization.k8s.io", "authentication.k8s.io"
REVIEWS = {(AUTHZ, "v1", "selfsubjectaccessreviews"), (AUTHZ, "v1", "subjectaccessreviews"),
           (AUTHZ, "v1", "selfsubjectrulesreviews"), (AUTHN, "v1", "tokenreviews"), (AUTHN, "v1", "selfsubjectreviews")}


def _attributes(spec: dict[str, Any]) -> auth.Attributes:
    res, nonres = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if res:
        return auth.Attributes(verb=res.get("verb", ""), group=res.get("group", ""), resource=res.get("resource", ""),
                               subresource=res.get("subresource", ""), namespace=res.get("namespace", ""),
                               name=res.get("name", ""))
    if nonres:
        return auth.Attributes(verb=nonres.get("verb", ""), path=nonres.get("path", ""))
    raise ApiError(422, "Invalid", "spec: Invalid value: exactly one of resourceAttributes or nonResourceAttributes "
                   "must be set")


def answer(server: Any, kind: Kind, namespace: str | None, name: str | None, body: Any) -> dict[str, Any]:
    user: auth.User = server._user
    body = body if isinstance(body, dict) else {}
    spec = body.get("spec") or {}
    out = {"apiVersion": kind.api_version if kind.plural != "serviceaccounts" else f"{AUTHN}/v1",
           "kind": kind.kind if kind.plural != "serviceaccounts" else "TokenRequest",
           "metadata": {"creationTimestamp": None}, "spec": spec}
    if kind.plural == "serviceaccounts":  # POST serviceaccounts/<name>/token
        seconds = int(spec.get("expirationSeconds") or 3600)
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
        out["metadata"].update(name=name, namespace=namespace)
        out["status"] = {"token": server.service_account_token(namespace, name),
                         "expirationTimestamp": expires.replace(microsecond=0).isoformat().replace("+00:00", "Z")}
    elif kind.plural == "selfsubjectaccessreviews":
        allowed = server.authorizer.allowed(user, _attributes(spec))
        out["status"] = {"allowed": allowed, **({"reason": "RBAC: allowed"} if allowed else {})}
    elif kind.plural == "subjectaccessreviews":
        subject = auth.User(spec.get("user", ""), tuple(spec.get("groups") or ()), spec.get("uid", ""))
        allowed = server.authorizer.allowed(subject, _attributes(spec))
        out["status"] = {"allowed": allowed, **({"reason": "RBAC: allowed"} if allowed else {})}
    elif kind.plural == "selfsubjectrulesreviews":
        rules = server.authorizer.rules_for(user, spec.get("namespace") or None)
        out["status"] = {
            "resourceRules": [{k: r[k] for k in ("verbs", "apiGroups", "resources", "resourceNames") if k in r}
                              for r in rules if not r.get("nonResourceURLs")],
            "nonResourceRules": [{"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}
                                 for r in rules if r.get("nonResourceURLs")],
            "incomplete": False}
    elif kind.plural == "tokenreviews":
        reviewed = server.tokens.user(f"Bearer {spec.get('token', '')}", server._service_account_uid)
        out["status"] = ({"authenticated": True, "user": reviewed.info()} if reviewed
                         else {"authenticated": False, "error": "invalid bearer token"})
    elif kind.plural == "selfsubjectreviews":
        out["status"] = {"userInfo": user.info()}
    return out
