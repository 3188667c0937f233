"""Starting the operator: logging, kopf in the watched namespaces, and leader election.

With leader election on (the chart's default for several replicas), a replica
first acquires the Lease, reports healthy only then, and exits as soon as it
stops leading, so that the pod restarts as a standby instead of two replicas
reconciling at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

import kopf

from hone_operator import main as handlers  # noqa: F401  (importing it registers the kopf handlers)
from hone_operator.kube import Kube, load_api_client
from hone_operator.leader import LeaderElector, serve_health_while
from hone_operator.settings import OperatorSettings, load


def run_operator(verbose: bool = False) -> None:
    settings = load()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kubernetes", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # kopf logs every handled event at INFO; the controller logs what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(lead_then_operate(settings) if settings.leader_election else operate(settings))


def own_identity() -> str:
    """Who this operator is (kopf's peering identity; the lease holder): the pod's name.

    Never derived from the user database: the images run as UID 10001 with no passwd entry
    (and clusters may pick any UID), where ``getpass.getuser()``, kopf's default, raises.
    """
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


async def operate(settings: OperatorSettings) -> None:
    await kopf.operator(
        clusterwide=not settings.watch_namespaces,
        namespaces=settings.watch_namespaces,
        standalone=True,
        identity=own_identity(),
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
    )


async def lead_then_operate(settings: OperatorSettings) -> None:
    namespace = settings.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"
    identity = own_identity()
    elector = LeaderElector(Kube(load_api_client(pool_size=2)), namespace, settings.lease_name, identity,
                            settings.lease_duration_seconds)
    leading = asyncio.Event()
    health = asyncio.create_task(serve_health_while(settings.health_port, leading)) if settings.health_port \
        else None
    await elector.acquire()
    leading.set()
    if health is not None:
        await health
    work = asyncio.create_task(operate(settings))
    keeper = asyncio.create_task(elector.keep())
    done, _ = await asyncio.wait({work, keeper}, return_when=asyncio.FIRST_COMPLETED)
    if keeper in done:  # leadership lost: stop at once, the pod restarts as a standby
        work.cancel()
        logging.getLogger("hone.leader").error("stopping: this replica no longer leads")
        raise SystemExit(1)
    keeper.cancel()
    await work
