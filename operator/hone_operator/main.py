"""kopf registration only: ``kopf run -m hone_operator.main`` (or ``python -m hone_operator``).

The handlers here feed the controller's cache and queue; all decisions live
in :mod:`hone_operator.reconcile` (pure planners), all object shapes in :mod:`hone_operator.builders`.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from hone_operator import kube, settings as settings_mod
from hone_operator.api.v1alpha1 import GROUP, VERSION
from hone_operator.builders.common import FINETUNEJOB_LABEL, MODELSERVING_LABEL
from hone_operator.controller import Controller
from hone_operator.metrics import OperatorMetrics

log = logging.getLogger("hone.operator")


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = settings_mod.load()
    # Only raw event handlers are registered: kopf adds no finalizer and stores no progress or
    # diff-base annotations for them, so there is nothing of kopf's persistence to configure.
    settings.watching.server_timeout = cfg.watch_server_timeout
    settings.watching.client_timeout = cfg.watch_client_timeout
    settings.posting.level = logging.WARNING  # Events come from the controller, not kopf's log
    metrics = OperatorMetrics(cfg.prices)
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, registry=metrics.registry)
        log.info("metrics on :%d/metrics", cfg.metrics_port)
    api = kube.load_api_client(pool_size=cfg.reconcile_workers * 2)
    if cfg.network.enabled and not cfg.network.api_server:
        cfg.network.api_server = api_server_cidrs(kube.Kube(api))
    controller = Controller(cfg, kube.Kube(api), metrics)
    if cfg.quota_port:  # bound before anything starts: a port that cannot be had ends the operator, saying why
        from hone_operator.quota import QuotaService

        quota = QuotaService(controller)
        try:
            await quota.start(cfg.quota_port)
        except OSError as exc:
            raise kopf.PermanentError(f"the quota endpoint cannot listen on port {cfg.quota_port} ({exc}); "
                                      "free the port or change quota_port (the chart's quota.port)") from exc
        memo["quota"] = quota
    await controller.start()
    memo["controller"] = controller


def api_server_cidrs(client: kube.Kube) -> list[str]:
    """The API server's addresses as pods reach it (the endpoints of the ``kubernetes`` Service, what its
    ClusterIP is translated to before a NetworkPolicy sees the packet), for the training pods' policies; []
    (their API server ports then open to any address) when they cannot be read."""
    try:
        endpoints = client.get("v1", "Endpoints", "default", "kubernetes") or {}
    except Exception as exc:  # noqa: BLE001 - forbidden, unreachable: fall back, and say so
        endpoints, reason = {}, str(exc).splitlines()[0]
    else:
        reason = "the Service has no endpoints"
    ips = sorted({a["ip"] for subset in endpoints.get("subsets") or [] for a in subset.get("addresses") or []
                  if a.get("ip")})
    if not ips:
        log.warning("the API server's endpoints could not be read (%s): training pods' NetworkPolicies let them "
                    "reach the API server ports of any address; set networkPolicy.workloads.apiServerCIDRs", reason)
        return []
    log.info("API server endpoints for training pods' NetworkPolicies: %s", ", ".join(ips))
    return [f"{ip}/128" if ":" in ip else f"{ip}/32" for ip in ips]


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    quota = memo.get("quota")
    if quota is not None:
        await quota.stop()
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.stop()


@kopf.on.event(GROUP, VERSION, "finetunejobs")
async def finetunejob_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].on_finetunejob(event.get("type"), event["object"])


@kopf.on.event("batch", "v1", "jobs", labels={FINETUNEJOB_LABEL: kopf.PRESENT})
async def job_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].on_job(event.get("type"), event["object"])


@kopf.on.event("", "v1", "pods", labels={FINETUNEJOB_LABEL: kopf.PRESENT})
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].on_pod(event.get("type"), event["object"])


@kopf.on.event("", "v1", "pods", labels={MODELSERVING_LABEL: kopf.PRESENT})
async def serving_pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].on_pod(event.get("type"), event["object"])


@kopf.on.event(GROUP, VERSION, "modelservings")
async def modelserving_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].on_modelserving(event.get("type"), event["object"])


@kopf.on.event("apps", "v1", "deployments", labels={MODELSERVING_LABEL: kopf.PRESENT})
async def deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].on_deployment(event.get("type"), event["object"])


@kopf.on.event(GROUP, VERSION, "tokenbudgets")
async def tokenbudget_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].on_budget(event.get("type"), event["object"])
