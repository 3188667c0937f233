"""Test helpers: run the real operator as a process, and play the Job controller."""

from __future__ import annotations

import copy
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar

from hone_dev import ROOT
from hone_operator.kube import Kube

T = TypeVar("T")


def wait_for(fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``fn`` until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}: last value {last!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: charts/hone values -> the ServiceAccount, roles and bindings the chart gives the operator.
_CHART_RBAC: dict[str | None, list[dict[str, Any]]] = {}
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def chart_rbac(values: Path | None = None) -> list[dict[str, Any]]:
    """The RBAC objects ``helm template charts/hone`` renders with these values (rendered once a process)."""
    from hone_dev.repo import render

    key = str(values) if values else None
    if key not in _CHART_RBAC:
        _CHART_RBAC[key] = [o for o in render(values) if o["kind"] in RBAC_KINDS]
    return copy.deepcopy(_CHART_RBAC[key])


def install_chart_rbac(apiserver: Any, values: Path | None = None) -> tuple[str, str]:
    """Create the chart's ServiceAccount, roles and bindings as ``helm install`` would; (namespace, name) of the
    ServiceAccount."""
    objs = chart_rbac(values)

    def install(server: Any) -> None:
        for obj in objs:
            kind = next(k for k in server.kinds.values() if (k.api_version, k.kind) == (obj["apiVersion"], obj["kind"]))
            ns = obj["metadata"].get("namespace") if kind.namespaced else None
            if ns:
                server.make_namespace(ns)
            if server._key(kind, ns, obj["metadata"]["name"]) not in server.store[kind.gvr]:
                server.create(kind, ns, obj)
    apiserver.call(install)
    account = next(o for o in objs if o["kind"] == "ServiceAccount")
    return account["metadata"]["namespace"], account["metadata"]["name"]


class OperatorProcess:
    """``python -m hone_operator`` as a separate process, with exactly the RBAC ``charts/hone`` gives it.

    The chart's ServiceAccount, roles and bindings are created in the emulated API server (for
    the values that match ``env``: namespaced with ``HONE_WATCH_NAMESPACES``, leader election with
    ``HONE_LEADER_ELECTION``), and the operator authenticates with a token of that ServiceAccount:
    a call the chart does not allow fails the test, as it would fail on a cluster.
    """

    def __init__(self, apiserver: Any, log_path: Path, env: dict[str, str] | None = None):
        from hone_dev.repo import CHART

        self.apiserver = apiserver
        self.log_path = log_path
        self.extra_env = env or {}
        values = None
        if "HONE_WATCH_NAMESPACES" in self.extra_env:
            values = CHART / "ci" / "namespaced-values.yaml"
        elif self.extra_env.get("HONE_LEADER_ELECTION") == "true":
            values = CHART / "ci" / "kueue-ha-values.yaml"
        namespace, account = install_chart_rbac(apiserver, values)
        self.kubeconfig = apiserver.service_account_kubeconfig(log_path.with_name(log_path.stem + ".kubeconfig"),
                                                                namespace, account)
        self.metrics_port = free_port()
        self.quota_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> "OperatorProcess":
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HONE_METRICS_PORT": str(self.metrics_port),
            "HONE_HEALTH_PORT": "0",
            "HONE_QUOTA_PORT": str(self.quota_port),
            "HONE_RETRY_DELAY_SECONDS": "0.5",
            "HONE_RUNTIME_IMAGE": "registry.example/hone-runtime:test",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer")]),
            **self.extra_env,
        }
        log = open(self.log_path, "ab")
        since = self.apiserver.call(lambda server: len(server.audit))
        self.proc = subprocess.Popen([sys.executable, "-m", "hone_operator"], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        if wait:
            wait_for(self._ready, timeout=60, interval=0.1, what=f"operator metrics (log: {self.log_path})")
            wait_for(lambda: self.watching(since), timeout=60, interval=0.1,
                     what=f"kopf watching FineTuneJobs and ModelServings (log: {self.log_path})")
        return self

    def watching(self, since: int = 0) -> bool:
        """Whether kopf has opened its watches on both kinds in every namespace it serves.

        The positive signal that the operator will see what a test creates next: metrics are
        served before kopf has discovered its resources and namespaces.
        """
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        namespaces = json.loads(self.extra_env.get("HONE_WATCH_NAMESPACES", "null")) or [None]

        def seen(server: Any) -> set[tuple[str, str | None]]:
            return {(a.resource, a.namespace) for a in server.audit[since:]
                    if a.verb == "watch" and "kopf" in a.user_agent.lower()}
        opened = self.apiserver.call(seen)
        return all((plural, ns) in opened for plural in ("finetunejobs", "modelservings") for ns in namespaces)

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1).read()
            return True
        except OSError:
            return False

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()

    def kill(self) -> None:
        """SIGKILL: no cleanup, like a node dying under the operator."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --------------------------------------------------------------------------
# What a user creates before applying the samples
# --------------------------------------------------------------------------

SAMPLE_CHATS = "\n".join(
    '{"messages": [{"role": "user", "content": "Do you ship to Lisbon?"}, '
    '{"role": "assistant", "content": "Yes, in 3 to 5 working days."}]}' for _ in range(12)) + "\n"


def seed_namespace(kube: Kube, ns: str) -> None:
    """The ConfigMap and PersistentVolumeClaim that crds/samples/finetunejob-minimal.yaml uses."""
    for obj in (
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "support-chats", "namespace": ns},
         "data": {"train.jsonl": SAMPLE_CHATS}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "hone-models", "namespace": ns},
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "20Gi"}}}},
    ):
        if kube.get(obj["apiVersion"], obj["kind"], ns, obj["metadata"]["name"]) is None:
            kube.create(obj)


# --------------------------------------------------------------------------
# Playing the Job controller
# --------------------------------------------------------------------------


def get_job(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    return kube.get("batch/v1", "Job", ns, name)


def jobs(kube: Kube, ns: str) -> list[dict[str, Any]]:
    return kube.list("batch/v1", "Job", ns)


def ftj(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    obj = kube.get("hone.dev/v1alpha1", "FineTuneJob", ns, name)
    assert obj is not None, f"FineTuneJob {ns}/{name} is gone"
    return obj


def phase(kube: Kube, ns: str, name: str) -> str | None:
    return (ftj(kube, ns, name).get("status") or {}).get("phase")


def wait_phase(kube: Kube, ns: str, name: str, want: str, timeout: float = 30) -> dict[str, Any]:
    wait_for(lambda: phase(kube, ns, name) == want, timeout, what=f"{ns}/{name} phase {want}")
    return ftj(kube, ns, name)


def wait_admitted(kube: Kube, ns: str, name: str, timeout: float = 30) -> dict[str, Any]:
    """The job once its namespace's TokenBudget admitted it (``status.budget`` written, the training Job created
    before it). ``Queued`` alone is not that: the phase turns Queued a reconcile earlier, while the operator
    creates the namespace's default TokenBudget."""
    wait_for(lambda: (ftj(kube, ns, name).get("status") or {}).get("budget"), timeout,
             what=f"{ns}/{name} admitted by its TokenBudget")
    return ftj(kube, ns, name)


def make_pod(kube: Kube, job: dict[str, Any], index: int | None = None) -> dict[str, Any]:
    """Create a pod the way the Job controller does: template, labels, owner reference."""
    meta = job["metadata"]
    template = copy.deepcopy(job["spec"]["template"])
    labels = {**(template.get("metadata", {}).get("labels") or {}), "batch.kubernetes.io/job-name": meta["name"],
              "job-name": meta["name"]}
    annotations = {}
    if index is not None:
        annotations["batch.kubernetes.io/job-completion-index"] = str(index)
        labels["batch.kubernetes.io/job-completion-index"] = str(index)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-{secrets.token_hex(3)}",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": template["spec"],
    }
    return kube.create(pod)


def terminate_pod(kube: Kube, pod: dict[str, Any], container: str, exit_code: int, message: str = "",
                  disrupted: bool = False) -> None:
    status: dict[str, Any] = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [{
            "name": container, "ready": False, "restartCount": 0, "image": "hone-runtime", "imageID": "",
            "state": {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                     "message": message}},
        }],
    }
    if disrupted:
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                                 "message": "preempted by a higher-priority pod"}]
    meta = pod["metadata"]
    kube.patch("v1", "Pod", meta["namespace"], meta["name"], {"status": status}, subresource="status")


def set_job_status(kube: Kube, ns: str, name: str, **status: Any) -> dict[str, Any]:
    return kube.patch("batch/v1", "Job", ns, name, {"status": status}, subresource="status")


def finish_job(kube: Kube, ns: str, name: str, container: str, exit_code: int = 0, message: str = "",
               job_condition: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """Run one pod of the Job to its end, then mark the Job Complete or Failed."""
    job = get_job(kube, ns, name)
    assert job is not None, f"Job {ns}/{name} does not exist"
    pod = make_pod(kube, job, index=0 if job["spec"].get("completionMode") == "Indexed" else None)
    terminate_pod(kube, pod, container, exit_code, message)
    condition = job_condition or ("Complete" if exit_code == 0 else "Failed")
    cond = {"type": condition, "status": "True", "reason": reason or ("Completed" if condition == "Complete"
                                                                       else "BackoffLimitExceeded"),
            "message": ""}
    counts = {"succeeded": 1} if condition == "Complete" else {"failed": 1}
    return set_job_status(kube, ns, name, conditions=[cond], active=0, ready=0, **counts)
