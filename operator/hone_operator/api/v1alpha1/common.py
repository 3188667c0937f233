"""What both kinds of ``hone.dev/v1alpha1`` share: base models, Kubernetes value types, references
in the object's own namespace, URIs, conditions and metadata."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)
from pydantic.alias_generators import to_camel


GROUP = "hone.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
#: Set it (to a timestamp or any new value) to have the operator look at the object now; it answers with
#: ``status.lastHandledReconcileAt`` equal to the value once it has, like Flux's
#: ``reconcile.fluxcd.io/requestedAt``: e.g. ``kubectl annotate --overwrite ftj x hone.dev/reconcile-requested-at="$(date +%s)"``.
RECONCILE_REQUESTED_AT = f"{GROUP}/reconcile-requested-at"
#: On a FineTuneJob whose safety gate failed: "true" lets ModelServings serve it anyway (the operator records an
#: Event saying who serves what despite which rates). Anything else, or absent: they refuse.
SAFETY_OVERRIDE_ANNOTATION = f"{GROUP}/serve-despite-failed-safety-check"


class ApiModel(BaseModel):
    """Base of every API type: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def cel_rules(*rules: dict[str, str]) -> ConfigDict:
    """An ApiModel config whose schema carries CEL rules (``x-kubernetes-validations``).

    The API server evaluates them at apply time, so ``kubectl apply`` and a GitOps sync refuse
    what the model's own validators refuse, with the same message, before any object exists.
    Each rule restates a ``model_validator`` of the same class; a test checks the two agree.
    """
    return ConfigDict(**ApiModel.model_config, json_schema_extra={"x-kubernetes-validations": list(rules)})


class StatusModel(BaseModel):
    """Base of status types: fields it does not know (newer versions, kopf) are ignored.

    The operator builds its status patches from these types (:meth:`to_status`), so the
    CRD schema generated from them and what is written into ``status`` cannot drift apart.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_status(self) -> dict[str, Any]:
        """The JSON written into ``status``: camelCase, without unset, empty or None fields."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {k: v for k, v in data.items() if v not in ([], {})}

    #: Keys written by someone other than the operator, which it never overwrites.
    NOT_OPERATOR_OWNED: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every status key this type defines, as written in the object."""
        return tuple(f.alias or name for name, f in cls.model_fields.items())

    @classmethod
    def operator_keys(cls) -> tuple[str, ...]:
        """The keys the operator owns: its status patches read, write and diff only these."""
        return tuple(k for k in cls.keys() if k not in cls.NOT_OPERATOR_OWNED)


# --------------------------------------------------------------------------
# Value types with a Kubernetes-specific schema
# --------------------------------------------------------------------------

_AUTO_OR_POSITIVE_INT_SCHEMA = {
    "x-kubernetes-int-or-string": True,
    "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "enum": ["auto"]}],
}
AutoOrPositiveInt = Annotated[
    Literal["auto"] | Annotated[int, Field(ge=1)], WithJsonSchema(_AUTO_OR_POSITIVE_INT_SCHEMA)
]

# A number or "auto". Kubernetes structural schemas have no number-or-string
# type, so the field is left untyped and constrained by value: "auto", or a
# number > 0 (a string other than "auto" fails both branches, because no
# string is both at least 1 and at most 0 characters long).
_AUTO_OR_POSITIVE_NUMBER_SCHEMA = {
    "x-kubernetes-preserve-unknown-fields": True,
    "anyOf": [
        {"enum": ["auto"]},
        {"minimum": 0, "exclusiveMinimum": True, "minLength": 1, "maxLength": 0},
    ],
}
AutoOrPositiveNumber = Annotated[
    Literal["auto"] | Annotated[float, Field(gt=0)], WithJsonSchema(_AUTO_OR_POSITIVE_NUMBER_SCHEMA)
]

ZeroStage = Annotated[
    Literal["auto", 0, 1, 2, 3],
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer", "enum": [0, 1, 2, 3]}, {"type": "string", "enum": ["auto"]}],
        }
    ),
]

_QUANTITY_RE = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
Quantity = Annotated[
    str | int,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": _QUANTITY_RE}],
        }
    ),
]

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


def check_quantity(value: str | int | None, field: str) -> str | int | None:
    if value is None or isinstance(value, int):
        return value
    if not re.match(_QUANTITY_RE, value):
        raise ValueError(f"{field} {value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    return value


# --------------------------------------------------------------------------
# References: always in the object's own namespace
# --------------------------------------------------------------------------


class NamespacedRef(ApiModel):
    namespace: str | None = Field(
        None,
        description="Must be empty or equal to this object's namespace: Hone never reads "
        "objects from another namespace. Present only so that such an attempt is refused "
        "with a clear condition instead of being silently ignored.",
    )


class ConfigMapKeyRef(NamespacedRef):
    """A key of a ConfigMap in the same namespace."""

    name: str = Field(description="Name of the ConfigMap.", pattern=_DNS_SUBDOMAIN, max_length=253)
    key: str = Field(description="Key inside the ConfigMap that holds the JSONL data.", min_length=1)


class SecretRef(NamespacedRef):
    """A Secret in the same namespace; it is mounted as files, never put in env vars."""

    name: str = Field(description="Name of the Secret.", pattern=_DNS_SUBDOMAIN, max_length=253)


class FineTuneJobRef(NamespacedRef):
    """A FineTuneJob in the same namespace."""

    name: str = Field(description="Name of the FineTuneJob.", pattern=_DNS_SUBDOMAIN, max_length=253)
    checkpointStep: int | None = Field(
        None, alias="checkpointStep", ge=1,
        description="Serve the job's checkpoint of this step (one that its status.checkpoints lists as servable) "
                    "instead of its final model, under the name <fine-tuned model>:ckpt-step-N.")


class LabelRequirement(ApiModel):
    """One requirement of a label selector."""

    key: str = Field(description="The label's key.", min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="How the key's value is tested.")
    values: list[str] | None = Field(None, description="The values, for In and NotIn.")


class LabelSelector(ApiModel):
    """A Kubernetes label selector; empty selects everything."""

    match_labels: dict[str, str] | None = Field(None, description="Labels that must all be present with these values.")
    match_expressions: list[LabelRequirement] | None = Field(None, description="Requirements that must all hold.")


class IPBlock(ApiModel):
    """Addresses, as a CIDR with exceptions."""

    cidr: str = Field(description="A CIDR, e.g. 10.0.0.0/8 or 203.0.113.7/32.")
    except_: list[str] | None = Field(None, alias="except", description="CIDRs inside it that are left out.")


class NetworkPeer(ApiModel):
    """Pods (namespaceSelector and/or podSelector; a podSelector alone means this namespace) or addresses
    (ipBlock), as in a NetworkPolicy."""

    ip_block: IPBlock | None = Field(None, description="Addresses.")
    namespace_selector: LabelSelector | None = Field(None, description="Namespaces by label ({}: all).")
    pod_selector: LabelSelector | None = Field(None, description="Pods by label ({}: all).")


URI_SCHEMES = ("hf", "pvc", "s3", "http", "https", "file", "embedded")


def uri_scheme(uri: str) -> str:
    """The scheme of a model or data location; bare ``org/name`` means ``hf``."""
    if "://" in uri:
        return uri.split("://", 1)[0].lower()
    return "hf"


def parse_pvc_uri(uri: str) -> tuple[str, str]:
    """``pvc://claim/sub/path`` -> ``("claim", "sub/path")``."""
    rest = uri.split("://", 1)[1]
    claim, _, path = rest.partition("/")
    return claim, path.strip("/")


def check_uri(uri: str, allowed: tuple[str, ...], what: str) -> str:
    scheme = uri_scheme(uri)
    if scheme not in allowed:
        raise ValueError(
            f"{what} {uri!r} has scheme {scheme!r}; use one of "
            + ", ".join(f"{s}://" for s in allowed)
        )
    if scheme == "pvc":
        claim, path = parse_pvc_uri(uri)
        if not re.match(_DNS_SUBDOMAIN, claim):
            raise ValueError(
                f"{what} {uri!r}: the PersistentVolumeClaim name {claim!r} is not valid; "
                "write pvc://<claim-in-this-namespace>/<path>"
            )
        if any(part in (".", "..") for part in path.split("/")):
            raise ValueError(
                f"{what} {uri!r}: '.' and '..' are not allowed in a pvc:// path, which must stay inside "
                f"its claim; write the path from the claim's root: pvc://{claim}/<path>"
            )
    if scheme == "hf" and "://" not in uri and not re.match(r"^[\w.-]+(/[\w.-]+)?$", uri):
        raise ValueError(f"{what} {uri!r} is neither a URI nor a Hugging Face id like org/name")
    return uri


# --------------------------------------------------------------------------
# Shared by both kinds: conditions and metadata
# --------------------------------------------------------------------------


class Condition(StatusModel):
    """A Kubernetes condition (metav1.Condition)."""

    type: str = Field(description="Condition type, e.g. Failed, FilesValidated, Running.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason, e.g. InvalidSpec.")
    message: str = Field("", description="What happened and what to do about it.")
    lastTransitionTime: datetime | None = Field(None, alias="lastTransitionTime", description="When the status last changed.")
    observedGeneration: int | None = Field(None, alias="observedGeneration", description="The generation this condition was computed for.")


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads."""

    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    creationTimestamp: datetime | None = None
    deletionTimestamp: datetime | None = None

    @field_validator("name", "namespace")
    @classmethod
    def _kubernetes_name(cls, value: str | None, info: Any) -> str | None:
        """Kubernetes' own rule for names; it is also what keeps `hone run`'s paths (which are built
        from namespace and name) inside their root."""
        pattern, limit = (_DNS_SUBDOMAIN, 253) if info.field_name == "name" else (_DNS_LABEL, 63)
        if value is not None and (len(value) > limit or not re.match(pattern, value)):
            raise ValueError(f"{value!r} is not a valid Kubernetes {info.field_name}: use at most {limit} "
                             "lowercase letters, digits and '-'" + (" or '.'" if info.field_name == "name" else "")
                             + ", starting and ending with a letter or digit")
        return value
