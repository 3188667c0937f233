"""A thin, typed-enough layer over the Kubernetes client's ApiClient.

The official client does authentication, TLS, kubeconfig and in-cluster
config; this module only maps (apiVersion, kind) to REST paths so that the
controller can work with the plain dicts the builders return.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from hone_trainer import __version__

log = logging.getLogger(__name__)

PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Event"): "events",
    ("v1", "Pod"): "pods",
    ("v1", "Secret"): "secrets",
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("batch/v1", "Job"): "jobs",
    ("apps/v1", "Deployment"): "deployments",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("authentication.k8s.io/v1", "TokenReview"): "tokenreviews",
    ("authorization.k8s.io/v1", "SubjectAccessReview"): "subjectaccessreviews",
    ("hone.dev/v1alpha1", "FineTuneJob"): "finetunejobs",
    ("hone.dev/v1alpha1", "ModelServing"): "modelservings",
    ("hone.dev/v1alpha1", "TokenBudget"): "tokenbudgets",
}


USER_AGENT = f"hone-operator/{__version__}"


class Conflict(Exception):
    """409: the object exists already, or a write raced another one."""


class NotFound(Exception):
    """404."""


def load_api_client(pool_size: int = 16) -> client.ApiClient:
    """In-cluster config when running in a pod, else the current kubeconfig context."""
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = pool_size
    cfg.retries = 3
    api = client.ApiClient(cfg)
    api.user_agent = USER_AGENT
    return api


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None,
         subresource: str | None = None) -> str:
    plural = PLURALS[(api_version, kind)]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    out = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        out += f"/{name}"
    if subresource:
        out += f"/{subresource}"
    return out


class Kube:
    """Synchronous API calls on plain dicts (the controller runs them in threads)."""

    def __init__(self, api: client.ApiClient, timeout: float = 30.0):
        self.api = api
        self.timeout = timeout

    def _call(self, method: str, url: str, body: Any = None, query: list[tuple[str, str]] | None = None,
              content_type: str = "application/json") -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            if hasattr(self.api, "param_serialize"):  # kubernetes >= 33 (new generator)
                m, full_url, hdrs, data, _ = self.api.param_serialize(
                    method, url, query_params=query or [], header_params=headers, body=body,
                    auth_settings=["BearerToken"])
                resp = self.api.call_api(m, full_url, header_params=hdrs, body=data,
                                         _request_timeout=self.timeout)
                resp.read()
                if not 200 <= resp.status < 300:
                    raise ApiException(http_resp=resp)
                return json.loads(resp.data) if resp.data else None
            raw = self.api.call_api(  # older clients: take the raw response, parse it here
                url, method, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"], _return_http_data_only=True, _preload_content=False,
                _request_timeout=self.timeout)
            return json.loads(raw.data) if raw.data else None
        except ApiException as exc:
            if exc.status == 404:
                raise NotFound(f"{method} {url}: {exc.reason}") from exc
            if exc.status == 409:
                raise Conflict(f"{method} {url}: {exc.reason}") from exc
            raise

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", path(api_version, kind, namespace, name))
        except NotFound:
            return None

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        if field_selector:
            query.append(("fieldSelector", field_selector))
        data = self._call("GET", path(api_version, kind, namespace), query=query)
        return list((data or {}).get("items") or [])

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return self._call("POST", path(obj["apiVersion"], obj["kind"], meta.get("namespace")), body=obj)

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT: fails with :class:`Conflict` when ``metadata.resourceVersion`` is no longer current."""
        meta = obj["metadata"]
        return self._call("PUT", path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]), body=obj)

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any],
              subresource: str | None = None) -> dict[str, Any]:
        return self._call("PATCH", path(api_version, kind, namespace, name, subresource), body=patch,
                          content_type="application/merge-patch+json")

    def delete(self, api_version: str, kind: str, namespace: str, name: str,
               propagation: str = "Background") -> None:
        try:
            self._call("DELETE", path(api_version, kind, namespace, name),
                       body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation})
        except NotFound:
            pass
