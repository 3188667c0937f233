"""The resources the emulator serves, its audit log and its error type."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any


GVR = tuple[str, str, str]  # (group, version, plural)

# The built-in resources the emulator's own admission, node and controllers work on.
PODS: GVR = ("", "v1", "pods")
NODES: GVR = ("", "v1", "nodes")
NAMESPACES: GVR = ("", "v1", "namespaces")
SERVICES: GVR = ("", "v1", "services")
SERVICE_ACCOUNTS: GVR = ("", "v1", "serviceaccounts")
CONFIGMAPS: GVR = ("", "v1", "configmaps")
SECRETS: GVR = ("", "v1", "secrets")
PVCS: GVR = ("", "v1", "persistentvolumeclaims")
JOBS: GVR = ("batch", "v1", "jobs")
REPLICASETS: GVR = ("apps", "v1", "replicasets")
DEPLOYMENTS: GVR = ("apps", "v1", "deployments")
MERGE = "application/merge-patch+json"


@dataclasses.dataclass
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False  # has the status subresource
    scale: dict[str, str] | None = None
    schema: dict[str, Any] | None = None
    validator: Any = None
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    #: Verbs discovery lists (None: the usual eight).
    verbs: tuple[str, ...] | None = None
    #: additionalPrinterColumns of a CRD version (the columns of server-side Tables).
    columns: tuple[dict[str, Any], ...] = ()

    @property
    def gvr(self) -> GVR:
        return (self.group, self.version, self.plural)

    @property
    def qualified(self) -> str:
        """``finetunejobs.hone.dev``, or ``namespaces`` for the core group (as API errors name resources)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


BUILTINS = [
    Kind("", "v1", "namespaces", "Namespace", namespaced=False, status=True, short_names=("ns",)),
    Kind("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    Kind("", "v1", "services", "Service", status=True, short_names=("svc",), categories=("all",)),
    Kind("", "v1", "pods", "Pod", status=True, short_names=("po",), categories=("all",)),
    Kind("", "v1", "nodes", "Node", namespaced=False, status=True, short_names=("no",)),
    Kind("", "v1", "events", "Event"),
    Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", status=True, short_names=("pvc",)),
    Kind("batch", "v1", "jobs", "Job", status=True, categories=("all",)),
    Kind("apps", "v1", "deployments", "Deployment", status=True, short_names=("deploy",), categories=("all",),
         scale={"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}),
    Kind("apps", "v1", "replicasets", "ReplicaSet", status=True, short_names=("rs",), categories=("all",),
         scale={"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}),
    Kind("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", status=True,
         short_names=("hpa",), categories=("all",)),
    Kind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Kind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    Kind("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", status=True, short_names=("pdb",)),
    Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    Kind("coordination.k8s.io", "v1", "leases", "Lease"),
    Kind("events.k8s.io", "v1", "events", "Event"),
    # Reviews: created and answered at once, never stored.
    Kind("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", namespaced=False,
         verbs=("create",)),
    Kind("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", namespaced=False,
         verbs=("create",)),
    Kind("authorization.k8s.io", "v1", "selfsubjectrulesreviews", "SelfSubjectRulesReview", namespaced=False,
         verbs=("create",)),
    Kind("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", namespaced=False, verbs=("create",)),
    Kind("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", namespaced=False,
         verbs=("create",)),
    Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False,
         status=True, short_names=("crd", "crds")),
]

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclasses.dataclass(frozen=True)
class Audit:
    verb: str
    group: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    status: int
    user_agent: str = ""
    at: float = 0.0  # time.monotonic() when served
    user: str = ""  # who made it (the authenticated user's name)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def body(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": self.code, "reason": self.reason, "message": self.message, "details": self.details}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
