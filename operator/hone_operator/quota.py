"""The leader's quota endpoint: serving pods report the tokens they served and are granted tokens to serve.

``POST /quota/v1/report`` with the pod's ServiceAccount token (``Authorization: Bearer``) and a
:class:`~hone_trainer.contract.QuotaReport` as JSON; the answer is a :class:`~hone_trainer.contract.QuotaAnswer`
(the serving pod reads both with the same models).

Who may report what:

* The token is checked with a TokenReview for the audience ``hone-quota`` (the serving pod's projected
  token has it, so it is good for nothing else); it must be a ServiceAccount's (``system:serviceaccount:<ns>:…``).
  Its namespace is the only one the report can touch: a pod can neither read nor spend another
  namespace's budget.
* The pod named must exist in that namespace with that uid and be a ModelServing's server pod (its
  labels). A report only ever raises its own pod's served count; so a forged report can take tokens from
  its own namespace's remainder, never give any back or touch another pod's record.

Each report is one write of the namespace's governing TokenBudget's status (only when it changes something,
or to keep the pod counted as live), with the ``resourceVersion`` it was computed from; the grant in the
answer is durable before the pod may serve it. Reports of one namespace are applied one at a time here; a
409 (another writer) re-reads the budget and applies the report again.

Only the leader runs this endpoint (a standby replica runs no kopf and opens no port), so the Service
reaches the leader alone; a pod that cannot reach it keeps serving within what it holds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from hone_operator.builders.common import COMPONENT_LABEL, MODELSERVING_LABEL
from hone_operator.builders.modelserving import QUOTA_AUDIENCE as AUDIENCE
from hone_trainer.contract import QuotaReport

if TYPE_CHECKING:
    from hone_operator.controller import Controller

log = logging.getLogger("hone.quota")
PATH = "/quota/v1/report"
#: How long a reviewed token is trusted without asking the API server again.
REVIEW_SECONDS = 60.0
MAX_BODY = 4096


class QuotaError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class QuotaService:
    def __init__(self, controller: "Controller"):
        self.controller = controller
        self.kube = controller.kube
        #: token -> (checked at, namespace, the pod uid a bound token names or "")
        self._reviews: dict[str, tuple[float, str, str]] = {}
        self._pods: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name) of a checked server pod
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._runner: web.AppRunner | None = None

    async def start(self, port: int) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "0.0.0.0", port).start()
        log.info("quota reports on :%d%s", port, PATH)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            try:
                body = await request.json()
            except ValueError:
                raise QuotaError(400, "the body is not JSON") from None
            auth = request.headers.get("Authorization", "")
            answer = await asyncio.to_thread(self.report, auth, body)
            return web.json_response(answer)
        except QuotaError as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=exc.status)
        except Exception as exc:  # noqa: BLE001 - the pod retries; the operator goes on
            log.exception("quota report failed")
            return web.json_response({"error": {"message": f"internal error: {exc}"}}, status=503)

    def report(self, auth: str, body: Any) -> dict[str, Any]:
        """Authenticate, check the pod, apply the report to its namespace's budget: the pod's answer."""
        namespace, bound_uid = self._review(auth)
        report = _parse(body)
        if bound_uid and bound_uid != report.uid:
            raise QuotaError(403, f"the token belongs to pod uid {bound_uid!r}, not {report.uid!r}")
        self._check_pod(namespace, report.pod, report.uid)
        with self._guard:
            lock = self._locks.setdefault(namespace, threading.Lock())
        with lock:
            return self.controller.apply_server_report(namespace, report).to_wire()

    def _review(self, auth: str) -> tuple[str, str]:
        """The token's ServiceAccount namespace, and the pod uid a pod-bound token names (else "")."""
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise QuotaError(401, "no bearer token: send the pod's ServiceAccount token")
        token = auth[7:].strip()
        cached = self._reviews.get(token)
        if cached is not None and time.monotonic() - cached[0] < REVIEW_SECONDS:
            return cached[1], cached[2]
        review = self.kube.create({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                   "metadata": {}, "spec": {"token": token, "audiences": [AUDIENCE]}})
        status = (review or {}).get("status") or {}
        if not status.get("authenticated"):
            raise QuotaError(401, f"the token was refused: {status.get('error') or 'not authenticated'}")
        user = status.get("user") or {}
        username = user.get("username", "")
        parts = username.split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            raise QuotaError(403, f"{username!r} is not a ServiceAccount: only serving pods report usage")
        bound = ((user.get("extra") or {}).get("authentication.kubernetes.io/pod-uid") or [""])[0]
        with self._guard:
            if len(self._reviews) > 4096:
                self._reviews.clear()
            self._reviews[token] = (time.monotonic(), parts[2], bound)
        return parts[2], bound

    def _check_pod(self, namespace: str, name: str, uid: str) -> None:
        if self._pods.get(uid) == (namespace, name):
            return
        pod = self.kube.get("v1", "Pod", namespace, name)
        meta = (pod or {}).get("metadata") or {}
        labels = meta.get("labels") or {}
        if pod is None or meta.get("uid") != uid:
            raise QuotaError(403, f"no pod {name!r} with uid {uid!r} in namespace {namespace!r}")
        if not labels.get(MODELSERVING_LABEL) or labels.get(COMPONENT_LABEL) != "server":
            raise QuotaError(403, f"pod {namespace}/{name} is not a ModelServing's server pod")
        with self._guard:
            if len(self._pods) > 4096:  # pods come and go: keep the cache bounded, as the token cache is
                self._pods.clear()
            self._pods[uid] = (namespace, name)


def _parse(body: Any) -> QuotaReport:
    try:
        return QuotaReport.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise QuotaError(400, f"{where}: {first['msg']}") from None
