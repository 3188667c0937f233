"""An emulated Kubernetes API server for Hone's tests and benchmarks.

Modules: ``kinds`` (the resources it serves, the audit log, errors), ``schema`` (CRD
schemas as JSON Schema, pruning), ``selection`` (label and field selectors), ``routes`` (URL paths, merge patch),
``writes`` (create, update, patch, delete, garbage collection), ``server`` (routing,
storage, watches) and ``thread`` (running it on loopback, the kubeconfig).

Not implemented: etcd or any persistence, admission webhooks, authentication and
RBAC (every request is allowed), protobuf, server-side apply, OpenAPI documents,
aggregated discovery and server-side Table output; those are the cluster-path issue's.

Built on kmock's :class:`~kmock.KubernetesEmulator` (HTTP server, discovery
endpoints, Kubernetes-style error bodies), it adds what stock kmock 0.8 lacks
and a real API server does:

* CRDs from ``crds/`` served as resources, with the CRD's OpenAPI schema
  applied: unknown fields pruned (or rejected with ``fieldValidation=Strict``)
  and invalid objects refused with 422 naming the field;
* ``uid``, ``resourceVersion`` (a global counter), ``generation`` (bumped on
  spec changes only), ``creationTimestamp``, ``generateName``;
* 409 on a create of an existing name and on a write with a stale
  ``resourceVersion``; PUT; JSON, merge and strategic-merge PATCH;
* the status subresource kept apart: writes to the main resource leave status
  alone, writes to ``/status`` change nothing else; the scale subresource;
* Namespaces, created on first use of a namespace (as if an admin had made
  them; kopf's namespaced mode watches Namespace objects);
* finalizers and ``deletionTimestamp``; garbage collection of dependents by
  ``ownerReferences`` (cascading, unless ``propagationPolicy=Orphan``);
* label and field selectors on list and watch; watches that resume from a
  ``resourceVersion`` (410 Gone when it is too old) and honour
  ``timeoutSeconds``;
* constant-time reads (kmock's own store replays every object's history on
  each read and slows to a crawl after a few hundred requests);
* an audit log of every resource request (verb, resource, namespace, name),
  used to count API writes and to derive the RBAC the operator really needs.

Nothing here runs controllers: tests play the Job controller by creating pods
and patching Job status, as a real cluster's controllers would.
"""

from hone_dev.apiserver.schema import error_field, prune, to_jsonschema  # noqa: F401
from hone_dev.apiserver.selection import field_match, label_match  # noqa: F401
from hone_dev.apiserver.server import HoneApiServer  # noqa: F401
from hone_dev.apiserver.thread import ApiServerThread  # noqa: F401
