"""An emulated Kubernetes API server (v1.32) for Hone's tests, benchmarks and ``hone dev-cluster``.

The real ``kubectl`` (1.32), the Kubernetes Python client and kopf drive it unmodified.
Modules: ``kinds`` (the resources it serves, the audit log, errors), ``discovery`` (``/version``,
legacy and aggregated discovery), ``openapi`` (``/openapi/v3``), ``openapi_v2`` (``/openapi/v2``), ``protobuf`` (request bodies
from kubectl's typed commands), ``tables`` (server-side Tables), ``schema`` (CRD schemas as JSON
Schema, pruning, kube-apiserver's messages), ``strategic`` (strategic merge patch), ``ssa``
(server-side apply, ``managedFields``), ``selection`` (label and field selectors), ``routes`` (URL paths, merge patch), ``writes`` (create, update,
patch, delete, garbage collection), ``server`` (routing, storage, watches, dry runs) and
``cel`` (the CRDs' validation rules), ``auth`` and ``auth_reviews`` (tokens, RBAC, the review kinds, TokenRequest), ``tls`` (its
certificates) and ``thread`` (running it over HTTPS on loopback, kubeconfigs).

Implemented, as kube-apiserver does it for the requests these clients make:

* HTTPS on loopback (clients send bearer tokens only over TLS) with a CA made at start-up;
  bearer-token authentication (an admin token, ServiceAccount tokens from TokenRequest; 401
  otherwise) and RBAC from the stored roles and bindings with the bootstrap roles, 403 bodies
  worded as kube-apiserver words them, RBAC's escalation check on roles and bindings,
  SelfSubjectAccessReview, SubjectAccessReview, SelfSubjectRulesReview, TokenReview and
  SelfSubjectReview (``kubectl auth can-i [--list]``, ``auth whoami``, ``create token``);

* ``/version`` inside kubectl 1.32's skew; ``/api``, ``/apis`` and per-group-version discovery,
  legacy and aggregated (``apidiscovery.k8s.io/v2``), subresources listed only as subresources;
  short names and categories (``kubectl get hone``);
* ``/openapi/v3``: the official 1.32 definitions of the built-in kinds (from the
  ``kubernetes-validate`` package) and the installed CRDs' schemas, rebuilt when a CRD changes,
  with the PATCH operations kubectl looks for (so ``kubectl apply`` validates on the server and
  ``kubectl explain`` prints the CRD's field docs); ``/openapi/v2`` as gnostic protobuf (what
  client-go asks for) with the same definitions and no paths, for clients without v3;
* protobuf request bodies (``k8s\x00`` + ``runtime.Unknown``) for the built-in kinds typed
  kubectl commands send; answers are JSON, which every client accepts;
* CRDs created through the API (``kubectl apply -f crds/``, helm) are served at once and
  report ``Established``; deleting one deletes its objects;
* the CRD's OpenAPI schema applied to custom resources: unknown fields pruned, or refused with
  kube-apiserver's ``strict decoding error`` under ``fieldValidation=Strict`` (kubectl's
  default), invalid objects refused with 422 and a cause naming each field; the CRDs' CEL rules
  (``x-kubernetes-validations``, transition rules with ``oldSelf`` on updates) evaluated the
  same way, with their ``message``/``messageExpression``;
* ``uid``, ``resourceVersion`` (a global counter), ``generation`` (bumped on spec changes only),
  ``creationTimestamp``, ``generateName``;
* 409 on a create of an existing name and on a write with a stale ``resourceVersion``; PUT;
  JSON patch, JSON merge patch, and strategic merge patch for built-in kinds (merge keys and
  directives from the official definitions; 415 for custom resources, as the real server);
* client-side ``kubectl apply`` (the ``last-applied-configuration`` three-way merge), ``diff``
  and ``--dry-run=server`` (``dryRun=All``: every check, nothing stored, no event);
* server-side apply (``kubectl apply --server-side``, Argo CD, Flux, helm 4): ``managedFields``
  kept on every write, field managers, 409 conflicts naming the fields and the manager,
  ``force``, fields an applier stops applying removed unless co-owned (see :mod:`.ssa` for the
  list types it merges by);
* server-side Tables: the CRDs' printer columns, the usual columns of a few built-in kinds,
  on get, list and watch (``kubectl get -w``);
* what ``helm install|upgrade|rollback|uninstall`` of ``charts/hone`` needs (release Secrets,
  CRDs from the chart's ``crds/``, server-side apply);
* the status subresource kept apart: writes to the main resource leave status alone, writes
  to ``/status`` change nothing else; the scale subresource (``kubectl scale msv``);
* Namespaces, created on first use of a namespace (as if an admin had made them);
* finalizers and ``deletionTimestamp``; garbage collection of dependents by
  ``ownerReferences`` (cascading, unless ``propagationPolicy=Orphan``);
* label and field selectors on list and watch; watches that resume from a
  ``resourceVersion`` (410 Gone when it is too old) and honour ``timeoutSeconds``;
* constant-time reads; an audit log of every resource request (verb, resource, namespace,
  name), used to count API writes and to derive the RBAC the operator really needs.

Left out: CRD defaulting (Hone's CRDs carry no defaults: the models apply them), CEL cost
limits, impersonation (``--as``), client certificates, RBAC aggregation, LocalSubjectAccessReview,
token expiry and audiences. Never: etcd or any persistence,
admission webhooks, API aggregation, protobuf responses, the paths of OpenAPI v2.
Nothing here runs controllers: tests play the Job controller by creating pods and patching Job
status, as a real cluster's controllers would.
"""

from hone_dev.apiserver.schema import error_field, prune, to_jsonschema  # noqa: F401
from hone_dev.apiserver.selection import field_match, label_match  # noqa: F401
from hone_dev.apiserver.server import HoneApiServer  # noqa: F401
from hone_dev.apiserver.thread import ApiServerThread  # noqa: F401
