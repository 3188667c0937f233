"""Leader election with a coordination.k8s.io Lease, so that several replicas run but one reconciles.

The rules of client-go's leader election, in brief: a replica takes the Lease
when it does not exist, when it already holds it, or when the holder's record
has not changed for ``leaseDurationSeconds`` *as observed by this replica's
own clock* (so clock skew between nodes does not matter). Every write goes
with the resourceVersion it read, so two replicas can never both win. The
leader renews every third of the duration; a leader that cannot renew within
the duration stops (the process exits and its pod restarts as a standby), so
at no time do two replicas reconcile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any

from hone_operator.kube import Conflict, Kube

log = logging.getLogger("hone.leader")
LEASE = ("coordination.k8s.io/v1", "Lease")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, duration: int):
        self.kube, self.namespace, self.name = kube, namespace, name
        self.identity, self.duration = identity, duration
        self._seen: tuple[Any, float] | None = None  # (holder record, monotonic time first seen)

    def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; True when this replica holds it afterwards."""
        lease = self.kube.get(*LEASE, self.namespace, self.name)
        now = _now()
        if lease is None:
            try:
                self.kube.create({"apiVersion": LEASE[0], "kind": LEASE[1],
                                  "metadata": {"name": self.name, "namespace": self.namespace},
                                  "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                                           "acquireTime": now, "renewTime": now, "leaseTransitions": 0}})
                return True
            except Conflict:
                return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"))
        if self._seen is None or self._seen[0] != record:
            self._seen = (record, time.monotonic())
        expired = time.monotonic() - self._seen[1] >= int(spec.get("leaseDurationSeconds") or self.duration)
        if holder not in (None, "", self.identity) and not expired:
            return False
        new_spec = {**spec, "holderIdentity": self.identity, "leaseDurationSeconds": self.duration, "renewTime": now}
        if holder != self.identity:
            new_spec["acquireTime"] = now
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        try:
            self.kube.replace({**lease, "spec": new_spec})  # carries the resourceVersion read above
        except Conflict:
            return False
        return True

    async def acquire(self) -> None:
        """Wait until this replica leads."""
        announced = False
        while True:
            try:
                if await asyncio.to_thread(self.try_acquire):
                    log.info("%s leads (Lease %s/%s)", self.identity, self.namespace, self.name)
                    return
            except Exception as exc:  # noqa: BLE001 - the API server may be briefly unreachable
                log.warning("leader election: %s", exc)
            if not announced:
                log.info("standing by: another replica holds Lease %s/%s", self.namespace, self.name)
                announced = True
            await asyncio.sleep(self.duration / 3)

    async def keep(self) -> None:
        """Renew until renewing fails for a whole lease duration; then return (the caller must stop)."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.duration / 3)
            try:
                if await asyncio.to_thread(self.try_acquire):
                    last_ok = time.monotonic()
                    continue
                log.error("lost the Lease %s/%s to another replica", self.namespace, self.name)
                return
            except Exception as exc:  # noqa: BLE001
                log.warning("renewing the Lease failed: %s", exc)
            if time.monotonic() - last_ok >= self.duration:
                log.error("could not renew the Lease for %ss; stopping", self.duration)
                return


async def serve_health_while(port: int, waiting: asyncio.Event) -> None:
    """Answer /healthz with 200 while standing by (liveness must not kill a standby replica)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readline()
            body = b'{"status": "standby"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port)
    async with server:
        await waiting.wait()
    await server.wait_closed()
