"""A stand-in for Kubernetes' Job controller, running inside the emulator's loop.

For benchmarks: it reacts to new Jobs without any HTTP round trip, so what is
measured is the operator, not the test harness. Validation Jobs finish at
once with a given result; training Jobs get one ready pod.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hone_dev.apiserver import HoneApiServer

JOBS = ("batch", "v1", "jobs")
PODS = ("", "v1", "pods")
MERGE = "application/merge-patch+json"


class InstantJobController:
    def __init__(self, server: HoneApiServer, validation_message: str):
        self.server = server
        self.validation_message = validation_message
        self.validated_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        self.server.watchers[JOBS].add(queue)
        while True:
            _, item = await queue.get()
            if item["type"] != "ADDED":
                continue
            job = item["object"]
            component = (job["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
            if component == "validate":
                self._finish(job, self.validation_message)
            elif component == "train":
                self._status(job, {"active": 1, "ready": 1})

    def _status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        meta = job["metadata"]
        self.server.write(self.server.kinds[JOBS], meta["namespace"], meta["name"], "status", {"status": status}, MERGE)

    def _finish(self, job: dict[str, Any], message: str) -> None:
        meta = job["metadata"]
        template = job["spec"]["template"]
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{meta['name']}-0", "namespace": meta["namespace"],
                         "labels": dict(template["metadata"]["labels"]),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True}]},
            "spec": template["spec"],
        }
        pods = self.server.kinds[PODS]
        self.server.create(pods, meta["namespace"], pod)
        container = template["spec"]["containers"][0]["name"]
        self.server.write(pods, meta["namespace"], pod["metadata"]["name"], "status", {"status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": container, "state": {"terminated": {"exitCode": 0, "message": message}}}],
        }}, MERGE)
        self._status(job, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
        self.validated_at[meta["name"].removesuffix("-validate")] = time.monotonic()
