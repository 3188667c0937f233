"""The emulator itself: authentication, routing, storage, watches and dry runs (served by :mod:`.thread`)."""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonschema
import kmock
import yaml

from hone_dev.apiserver import auth, auth_reviews, discovery, openapi, openapi_v2, protobuf, ssa, tables
from hone_dev.apiserver.kinds import ApiError, Audit, BUILTINS, GVR, PODS, Kind, WRITE_VERBS, now
from hone_dev.apiserver.routes import Route, parse_route
from hone_dev.apiserver.schema import to_jsonschema
from hone_dev.apiserver.selection import field_match, label_match
from hone_dev.apiserver.writes import WritePath

from hone_dev import ROOT


log = logging.getLogger(__name__)
#: The authenticated user's name, kept on the request for the audit log.
USER = aiohttp.web.RequestKey("hone_user", str)
CRDS: GVR = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


@attrs.define(kw_only=True)
class HoneApiServer(WritePath, kmock.KubernetesEmulator):
    kinds: dict[GVR, Kind] = attrs.field(factory=dict)
    store: dict[GVR, dict[tuple[str | None, str], dict[str, Any]]] = attrs.field(
        factory=lambda: collections.defaultdict(dict))
    rv: int = 0
    history: dict[GVR, collections.deque] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=20000)))
    watchers: dict[GVR, set[asyncio.Queue]] = attrs.field(factory=lambda: collections.defaultdict(set))
    audit: list[Audit] = attrs.field(factory=list)
    _encodings: dict[int, bytes] = attrs.field(factory=dict)
    #: Seconds added to every resource request, to model a real API server's latency.
    latency: float = 0.0
    _openapi: dict[str, Any] | None = None
    _openapi_v2: bytes | None = None
    _dry: bool = False
    tokens: auth.Tokens = attrs.field(factory=auth.Tokens)
    #: Who the request being served is (None: the emulator itself, for a test).
    _user: auth.User | None = None
    #: The Service address range; set when a node is attached (:mod:`.admission` is then active).
    service_range: Any = None
    #: ``pods/log``: (namespace, pod, query) -> an async iterator of log bytes; set by an attached node.
    pod_logs: Any = None

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for kind in BUILTINS:
            self.register(dataclasses.replace(kind))
        self.authorizer = auth.Authorizer(self._rbac_objects)
        roles, bindings = self.kinds[(auth.RBAC, "v1", "clusterroles")], self.kinds[(auth.RBAC, "v1",
                                                                                     "clusterrolebindings")]
        bootstrap = {"kubernetes.io/bootstrapping": "rbac-defaults"}
        for kind, objs in ((roles, auth.BOOTSTRAP_CLUSTER_ROLES), (bindings, auth.BOOTSTRAP_BINDINGS)):
            for obj in copy.deepcopy(objs):
                obj["metadata"]["labels"] = dict(bootstrap)
                self.create(kind, None, obj)

    def _rbac_objects(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        objs = self.store[(auth.RBAC, "v1", plural)]
        return [o for (ns, _), o in objs.items() if namespace is None or ns == namespace]

    def _service_account_uid(self, namespace: str, name: str) -> str | None:
        return (self.store[("", "v1", "serviceaccounts")].get((namespace, name)) or {}).get("metadata", {}).get("uid")

    def _check_grant(self, kind: Kind, obj: dict[str, Any]) -> None:
        """RBAC's escalation check: nobody grants (by a role or a binding) what they do not hold."""
        user = self._user
        if user is None or kind.group != auth.RBAC:
            return
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") if kind.namespaced else None
        name = meta.get("name", "")
        if kind.plural in ("roles", "clusterroles"):
            if self.authorizer.allowed(user, auth.Attributes("escalate", auth.RBAC, kind.plural, "", ns or "", name)):
                return
            missing = self.authorizer.covers(user, ns, obj.get("rules") or [])
        else:
            ref = obj.get("roleRef") or {}
            plural = "clusterroles" if ref.get("kind") == "ClusterRole" else "roles"
            if self.authorizer.allowed(user, auth.Attributes("bind", auth.RBAC, plural, "", ns or "",
                                                             ref.get("name", ""))):
                return
            role = self.store[(auth.RBAC, "v1", plural)].get((ns if plural == "roles" else None, ref.get("name", "")))
            if role is None:
                raise ApiError(404, "NotFound", f'{plural}.{auth.RBAC} "{ref.get("name")}" not found')
            missing = self.authorizer.covers(user, ns, role.get("rules") or [])
        if missing:
            groups = " ".join(json.dumps(g) for g in user.groups)
            raise ApiError(403, "Forbidden", f'{kind.qualified} "{name}" is forbidden: user "{user.name}" '
                           f"(groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n"
                           + "\n".join(missing), {"name": name, "group": auth.RBAC, "kind": kind.plural})

    def service_account_token(self, namespace: str, name: str) -> str:
        """A token for a ServiceAccount, as TokenRequest issues it (the ServiceAccount must exist)."""
        uid = self._service_account_uid(namespace, name)
        if uid is None:
            raise ApiError(404, "NotFound", f'serviceaccounts "{name}" not found', {"name": name,
                                                                                   "kind": "serviceaccounts"})
        return self.tokens.issue(namespace, name, uid)

    # ---- registration ------------------------------------------------------

    def register(self, kind: Kind) -> None:
        self.kinds[kind.gvr] = kind
        self._openapi = self._openapi_v2 = None

    def serve_crd(self, crd: dict[str, Any]) -> None:
        """Serve the resources a stored CRD defines (called on every write of a CRD)."""
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            schema = version["schema"]["openAPIV3Schema"]
            kind = Kind(
                group=spec["group"], version=version["name"], plural=spec["names"]["plural"],
                kind=spec["names"]["kind"], namespaced=spec["scope"] == "Namespaced",
                status="status" in (version.get("subresources") or {}),
                scale=(version.get("subresources") or {}).get("scale"),
                schema=schema, validator=jsonschema.Draft4Validator(to_jsonschema(schema)),
                short_names=tuple(spec["names"].get("shortNames", ())),
                categories=tuple(spec["names"].get("categories", ())),
                columns=tuple(version.get("additionalPrinterColumns") or ()),
            )
            self.register(kind)

    def install_crd(self, crd: dict[str, Any]) -> None:
        """Install a CRD as an administrator would before anything else runs."""
        kind = self.kinds[CRDS]
        existing = self.store[kind.gvr].get((None, crd["metadata"]["name"]))
        if existing is None:
            self.create(kind, None, copy.deepcopy(crd))
        else:
            self.write(kind, None, crd["metadata"]["name"], None, copy.deepcopy(crd), "application/json",
                       replace=True)

    def install_crds(self, folder: Path = ROOT / "crds") -> None:
        for path in sorted(folder.glob("*.yaml")):
            self.install_crd(yaml.safe_load(path.read_text()))

    # ---- HTTP entry --------------------------------------------------------

    # ---- non-resource paths: version, discovery, OpenAPI ---------------------

    def _non_resource(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse | None:
        path = raw.path.rstrip("/") or "/"
        accept = raw.headers.get("Accept", "")
        kinds = list(self.kinds.values())
        if path == "/version":
            return aiohttp.web.json_response(discovery.VERSION)
        if path in ("/healthz", "/livez", "/readyz"):
            return aiohttp.web.Response(text="ok")
        if path in ("/api", "/apis"):
            if discovery.wants_aggregated(accept):
                return aiohttp.web.Response(body=json.dumps(discovery.aggregated(kinds, core=path == "/api")).encode(),
                                            headers={"Content-Type": discovery.AGGREGATED})
            body = discovery.core_versions() if path == "/api" else discovery.group_list(kinds)
            return aiohttp.web.json_response(body)
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) == 2 or parts[0] == "apis" and len(parts) == 3:
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            members = [k for k in kinds if (k.group, k.version) == (group, version)]
            if members:
                return aiohttp.web.json_response(discovery.resource_list(members, "/".join(parts[1:])))
        if parts[0] == "apis" and len(parts) == 2:
            groups = [g for g in discovery.group_list(kinds)["groups"] if g["name"] == parts[1]]
            if groups:
                return aiohttp.web.json_response({"kind": "APIGroup", "apiVersion": "v1", **groups[0]})
        if parts == ["openapi", "v2"]:
            if self._openapi_v2 is None:
                self._openapi_v2 = openapi_v2.document(self.kinds.values())
            return aiohttp.web.Response(body=self._openapi_v2, headers={"Content-Type": openapi_v2.CONTENT_TYPE})
        if parts[:2] == ["openapi", "v3"]:
            docs = self.openapi_documents()
            if len(parts) == 2:
                return aiohttp.web.json_response(openapi.index(docs))
            doc = docs.get("/".join(parts[2:]))
            if doc is not None:
                return aiohttp.web.json_response(doc)
        return None

    def openapi_documents(self) -> dict[str, dict[str, Any]]:
        if self._openapi is None:
            self._openapi = openapi.documents(self.kinds.values())
        return self._openapi

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        try:
            return await self._serve(raw_request)
        except Exception as exc:  # noqa: BLE001 - a bug in the emulator answers as kube-apiserver's 500 does
            log.exception("emulated API server: %s %s failed", raw_request.method, raw_request.path_qs)
            return aiohttp.web.json_response(ApiError(500, "InternalError", f"Internal error occurred: {exc!r}").body(),
                                             status=500)

    async def _serve(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        path = raw_request.path.rstrip("/") or "/"
        user = self.tokens.user(raw_request.headers.get("Authorization"), self._service_account_uid)
        if user is None and path not in ("/healthz", "/livez", "/readyz"):
            return aiohttp.web.json_response(auth.UNAUTHORIZED.body(), status=401)
        if user is not None:
            raw_request[USER] = user.name
        route = parse_route(raw_request.path)
        if route is None or (route.group, route.version, route.plural) not in self.kinds:
            if user is not None:
                attrs = auth.Attributes(verb=raw_request.method.lower().replace("post", "create")
                                        if raw_request.method != "GET" else "get", path=path)
                if not self.authorizer.allowed(user, attrs):
                    error = auth.forbidden(user, attrs, "")
                    return aiohttp.web.json_response(error.body(), status=403)
            answered = self._non_resource(raw_request) if raw_request.method == "GET" else None
            if answered is not None:
                return answered
            return aiohttp.web.json_response(ApiError(404, "NotFound", "the server could not find the requested "
                                                      "resource").body(), status=404)
        kind = self.kinds[(route.group, route.version, route.plural)]
        query = dict(raw_request.query)
        if self.latency and str(query.get("watch", "")).lower() not in ("true", "1"):
            await asyncio.sleep(self.latency)
        method = raw_request.method.upper()
        verb = self._verb(method, route, query)
        body_bytes = await raw_request.read()
        status = 200
        try:
            self._authorize(user, verb, kind, route)
            body = self._body(body_bytes, raw_request.headers.get("Content-Type", ""))
            if verb == "watch":
                self._audit(verb, kind, route, 200, raw_request)
                return await self._watch(raw_request, kind, route, query)
            if verb == "get" and kind.gvr == PODS and route.subresource == "log":
                self._audit(verb, kind, route, 200, raw_request)
                return await self._pod_log(raw_request, route, query)
            # Set only while the (synchronous) dispatch runs: other requests interleave at awaits.
            self._user = user
            try:
                if query.get("dryRun") == "All" and verb in WRITE_VERBS:
                    payload, status = self._dry_run(verb, kind, route, query, body, raw_request.headers)
                else:
                    payload, status = self._dispatch(verb, kind, route, query, body, raw_request.headers)
            finally:
                self._user = None
            if verb in ("get", "list") and route.subresource is None and tables.wants_table(
                    raw_request.headers.get("Accept", "")):
                objs = payload["items"] if verb == "list" else [payload]
                rv = payload["metadata"]["resourceVersion"]
                payload = tables.table(kind, objs, rv, query.get("includeObject", "Metadata"))
        except ApiError as exc:
            self._audit(verb, kind, route, exc.code, raw_request)
            return aiohttp.web.json_response(exc.body(), status=exc.code)
        except json.JSONDecodeError as exc:
            return aiohttp.web.json_response(ApiError(400, "BadRequest", f"invalid JSON: {exc}").body(), status=400)
        if verb == "create" and not route.name:  # a create names its object in the body, not the path
            route = dataclasses.replace(route, name=(payload.get("metadata") or {}).get("name"))
        self._audit(verb, kind, route, status, raw_request)
        return aiohttp.web.json_response(payload, status=status)

    async def _pod_log(self, raw: aiohttp.web.BaseRequest, route: Route,
                       query: dict[str, str]) -> aiohttp.web.StreamResponse:
        """``kubectl logs``: what the node's kubelet kept of a container's output (``follow`` streams it)."""
        assert route.namespace and route.name
        self.get(self.kinds[PODS], route.namespace, route.name)
        if self.pod_logs is None:
            raise ApiError(400, "BadRequest", f'pod "{route.name}" is not running on a node: no logs')
        chunks = self.pod_logs(route.namespace, route.name, query)
        first = await chunks.__anext__()  # errors (no such container) before the response starts
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(raw)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    def _authorize(self, user: auth.User | None, verb: str, kind: Kind, route: Route) -> None:
        assert user is not None
        attrs = auth.Attributes(verb=verb, group=kind.group, resource=kind.plural, subresource=route.subresource or "",
                                namespace=(route.namespace or "") if kind.namespaced else "", name=route.name or "")
        self.authorizer.check(user, attrs, kind.qualified)

    @staticmethod
    def _body(data: bytes, content_type: str) -> Any:
        if not data:
            return None
        ctype = content_type.split(";")[0].strip()
        if ctype == protobuf.CONTENT_TYPE:
            return protobuf.decode(data)
        if ctype == ssa.APPLY:
            try:
                return yaml.safe_load(data)
            except yaml.YAMLError as exc:
                raise ApiError(400, "BadRequest", f"error decoding YAML: {exc}") from exc
        return json.loads(data)

    def _verb(self, method: str, route: Route, query: dict[str, str]) -> str:
        if method == "GET":
            if str(query.get("watch", "")).lower() in ("true", "1"):
                return "watch"
            return "get" if route.name else "list"
        if method == "POST":
            return "create"
        if method == "PUT":
            return "update"
        if method == "PATCH":
            return "patch"
        if method == "DELETE":
            return "delete" if route.name else "deletecollection"
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    def _audit(self, verb: str, kind: Kind, route: Route, status: int, raw: aiohttp.web.BaseRequest) -> None:
        self.audit.append(Audit(verb, kind.group, kind.plural, route.subresource, route.namespace, route.name,
                                status, raw.headers.get("User-Agent", ""), time.monotonic(), raw.get(USER, "")))

    def _dispatch(self, verb: str, kind: Kind, route: Route, query: dict[str, str], body: Any,
                  headers: Any) -> tuple[Any, int]:
        ns = route.namespace if kind.namespaced else None
        if kind.namespaced and route.namespace is None and verb not in ("list",):
            raise ApiError(404, "NotFound", f"{kind.plural} is namespaced; use /namespaces/<ns>/{kind.plural}")
        if verb == "list":
            return self.list(kind, ns, query.get("labelSelector"), query.get("fieldSelector")), 200
        if verb == "deletecollection":
            for obj in self._select(kind, ns, query.get("labelSelector"), query.get("fieldSelector")):
                self.delete(kind, ns, obj["metadata"]["name"], None)
            return {"kind": "Status", "apiVersion": "v1", "status": "Success"}, 200
        if kind.gvr in auth_reviews.REVIEWS or (verb == "create" and route.subresource == "token"
                                                 and kind.gvr == ("", "v1", "serviceaccounts")):
            return auth_reviews.answer(self, kind, ns, route.name, body), 201
        if verb == "create":
            if route.name:
                raise ApiError(405, "MethodNotAllowed", "POST to a named object")
            return self.create(kind, ns, body, strict=query.get("fieldValidation") == "Strict",
                               manager=ssa.manager_of(query, headers.get("User-Agent", ""))), 201
        assert route.name is not None
        if verb == "get":
            obj = self.get(kind, ns, route.name)
            return (self._scale_of(kind, obj) if route.subresource == "scale" else obj), 200
        if verb == "delete":
            return self.delete(kind, ns, route.name, body), 200
        ctype = (headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if ctype == ssa.APPLY and not query.get("fieldManager"):
            raise ApiError(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: "
                           "is required for apply patch")
        status = 200
        if ctype == ssa.APPLY and route.subresource is None and self._key(kind, ns, route.name) not in self.store[kind.gvr]:
            status = 201
        return self.write(kind, ns, route.name, route.subresource, body, ctype, replace=(verb == "update"),
                          strict=query.get("fieldValidation") == "Strict",
                          manager=ssa.manager_of(query, headers.get("User-Agent", "")),
                          force=query.get("force") == "true"), status

    # ---- storage operations -------------------------------------------------

    def _key(self, kind: Kind, ns: str | None, name: str) -> tuple[str | None, str]:
        return (ns if kind.namespaced else None, name)

    def _put(self, gvr: GVR, ns: str | None, obj: dict[str, Any], event: str = "ADDED") -> dict[str, Any]:
        if gvr == CRDS:
            self._crd_changed(obj, event)
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        key = (ns, meta["name"])
        if event == "DELETED":
            self.store[gvr].pop(key, None)
        else:
            self.store[gvr][key] = obj
        self._emit(gvr, event, obj)
        return obj

    def _crd_changed(self, crd: dict[str, Any], event: str) -> None:
        """A CRD written through the API is served at once and reports itself Established."""
        names = crd["spec"]["names"]
        gone = [gvr for gvr, k in self.kinds.items() if (k.group, k.plural) == (crd["spec"]["group"], names["plural"])]
        for gvr in gone:
            self.kinds.pop(gvr)
        self._openapi = self._openapi_v2 = None
        if event == "DELETED":
            for gvr in gone:
                for (ns, name), obj in list(self.store[gvr].items()):
                    self._put(gvr, ns, obj, "DELETED")
            return
        self.serve_crd(crd)
        accepted = {"plural": names["plural"], "singular": names.get("singular", names["kind"].lower()),
                    "kind": names["kind"], "listKind": names.get("listKind", names["kind"] + "List"),
                    **{k: names[k] for k in ("shortNames", "categories") if k in names}}
        crd["status"] = {
            "acceptedNames": accepted,
            "storedVersions": [v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
            "conditions": [{"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime":
                            crd.get("metadata", {}).get("creationTimestamp") or now()} for t, r, m in (
                ("NamesAccepted", "NoConflicts", "no conflicts found"),
                ("Established", "InitialNamesAccepted", "the initial names have been accepted"))],
        }

    def _dry_run(self, *args: Any) -> tuple[Any, int]:
        """``dryRun=All`` (``kubectl diff``, ``--dry-run=server``): every check and default, nothing stored.

        Stored objects are never mutated in place, so shallow copies of the store are a snapshot.
        """
        saved_store = {gvr: dict(objs) for gvr, objs in self.store.items()}
        saved_rv, saved_kinds = self.rv, dict(self.kinds)
        self._dry = True
        try:
            return self._dispatch(*args)
        finally:
            self._dry = False
            self.store.clear()
            self.store.update(saved_store)
            self.rv = saved_rv
            self.kinds.clear()
            self.kinds.update(saved_kinds)
            self._openapi = self._openapi_v2 = None

    def _emit(self, gvr: GVR, event: str, obj: dict[str, Any]) -> None:
        if self._dry:
            return
        # Stored objects are never mutated once stored (every write stores a
        # new dict), so events can share them instead of copying.
        item = (self.rv, {"type": event, "object": obj})
        self.history[gvr].append(item)
        for queue in list(self.watchers[gvr]):
            queue.put_nowait(item)

    def get(self, kind: Kind, ns: str | None, name: str) -> dict[str, Any]:
        obj = self.store[kind.gvr].get(self._key(kind, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.qualified} "{name}" not found',
                           {"name": name, "kind": kind.plural})
        return copy.deepcopy(obj)

    def _select(self, kind: Kind, ns: str | None, labels: str | None, fields: str | None) -> list[dict[str, Any]]:
        out = []
        for (ons, _), obj in self.store[kind.gvr].items():
            if ns is not None and ons != ns:
                continue
            if label_match(obj.get("metadata", {}).get("labels") or {}, labels) and field_match(obj, fields):
                out.append(obj)
        return out

    def list(self, kind: Kind, ns: str | None, labels: str | None = None, fields: str | None = None) -> dict[str, Any]:
        # In key order (namespace, then name), as etcd lists them; serialised at once, never mutated.
        items = sorted(self._select(kind, ns, labels, fields),
                       key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    # ---- watch -----------------------------------------------------------

    async def _watch(self, raw: aiohttp.web.BaseRequest, kind: Kind, route: Route,
                     query: dict[str, str]) -> aiohttp.web.StreamResponse:
        ns = route.namespace if kind.namespaced else None
        labels, fields = query.get("labelSelector"), query.get("fieldSelector")
        if route.name:
            fields = ",".join(f for f in (fields, f"metadata.name={route.name}") if f)
        timeout = float(query.get("timeoutSeconds") or 3600)
        since = query.get("resourceVersion")

        def matches(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            if ns is not None and meta.get("namespace") != ns:
                return False
            return label_match(meta.get("labels") or {}, labels) and field_match(obj, fields)

        # kubectl get -w asks for Tables: each event's object is a one-row Table, the column
        # definitions only in the first (as kube-apiserver streams them).
        as_table = tables.wants_table(raw.headers.get("Accept", ""))
        headers_sent = False

        def encoded(rv: int, item: dict[str, Any], snapshot: bool = False) -> bytes:
            nonlocal headers_sent
            if not as_table:
                # The per-revision cache holds the event that made a revision; a snapshot's ADDED
                # for an object last modified at that revision is another event.
                return json.dumps(item).encode() + b"\n" if snapshot else self._encoded(rv, item)
            table = tables.table(kind, [item["object"]], str(rv), query.get("includeObject", "Metadata"),
                                 headers=not headers_sent)
            headers_sent = True
            return json.dumps({"type": item["type"], "object": table}).encode() + b"\n"

        queue: asyncio.Queue = asyncio.Queue()
        self.watchers[kind.gvr].add(queue)
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        try:
            await response.prepare(raw)
            # Everything up to this revision is sent from the snapshot below;
            # the queue (registered first) carries everything after it.
            sent = self.rv
            if since in (None, "", "0"):
                snapshot = self._select(kind, ns, labels, fields)
                for obj in sorted(snapshot, key=lambda o: int(o["metadata"]["resourceVersion"])):
                    await response.write(encoded(int(obj["metadata"]["resourceVersion"]),
                                                 {"type": "ADDED", "object": obj}, snapshot=True))
            else:
                since_rv = int(since)
                history = self.history[kind.gvr]
                if history and history[0][0] > since_rv + 1 and len(history) == history.maxlen:
                    gone = ApiError(410, "Expired", f"too old resource version: {since_rv} ({history[0][0]})").body()
                    await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                    return response
                for rv, item in list(history):
                    if since_rv < rv <= sent and matches(item["object"]):
                        await response.write(encoded(rv, item))
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    rv, item = await asyncio.wait_for(queue.get(), timeout=remaining)
                except asyncio.TimeoutError:
                    break
                if rv <= sent or not matches(item["object"]):
                    continue
                await response.write(encoded(rv, item))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers[kind.gvr].discard(queue)
        return response

    def _encoded(self, rv: int, item: dict[str, Any]) -> bytes:
        """One JSON encoding per event, shared by every watcher."""
        cached = self._encodings.get(rv)
        if cached is None:
            cached = json.dumps(item).encode() + b"\n"
            self._encodings[rv] = cached
            while len(self._encodings) > 4096:
                self._encodings.pop(next(iter(self._encodings)))
        return cached

    # ---- helpers for tests (call from the server's own thread) ------------

    def make_namespace(self, name: str) -> None:
        """Create a Namespace as an administrator would (no-op when it exists)."""
        kind = self.kinds[("", "v1", "namespaces")]
        if (None, name) not in self.store[kind.gvr]:
            self.create(kind, None, {"metadata": {"name": name}})

    def writes(self, user_agent: str | None = None) -> list[Audit]:
        return [a for a in self.audit if a.verb in WRITE_VERBS and a.status < 400
                and (user_agent is None or user_agent in a.user_agent)]
