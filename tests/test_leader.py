"""Several operator replicas: one leads through a Lease and reconciles; a standby takes over."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from hone_operator.kube import Kube
from hone_dev.cluster import OperatorProcess, free_port, get_job, wait_for
from hone_dev.resources import NS, apply

LEASE = ("coordination.k8s.io/v1", "Lease", "hone-system", "hone")


def _env(name: str, health_port: int) -> dict[str, str]:
    # The Lease name is the one the chart configures (its leader Role allows only that Lease).
    return {"HONE_LEADER_ELECTION": "true", "HONE_LEASE_NAME": "hone", "HONE_LEASE_DURATION_SECONDS": "5",
            "POD_NAMESPACE": "hone-system", "POD_NAME": name, "HONE_HEALTH_PORT": str(health_port)}


def _health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return json.loads(resp.read() or b"{}") if resp.status == 200 else None
    except (OSError, ValueError):
        return None


def test_only_the_leader_reconciles_and_a_standby_takes_over(apiserver, kube: Kube, tmp_path: Path) -> None:
    port_a, port_b = free_port(), free_port()
    a = OperatorProcess(apiserver, tmp_path / "a.log", _env("op-a", port_a)).start()
    b = OperatorProcess(apiserver, tmp_path / "b.log", _env("op-b", port_b)).start(wait=False)
    try:
        assert kube.get(*LEASE)["spec"]["holderIdentity"] == "op-a"
        assert wait_for(lambda: _health(port_b), timeout=30, what="standby /healthz") == {"status": "standby"}

        apply(kube, name="first")
        wait_for(lambda: get_job(kube, NS, "first-validate"), what="validation Job from the leader")
        assert "created Job" in a.log() and "created" not in b.log()

        a.kill()  # the leader's node dies: no clean hand-over
        wait_for(lambda: kube.get(*LEASE)["spec"]["holderIdentity"] == "op-b", timeout=30,
                 what="the standby takes the Lease")
        lease = kube.get(*LEASE)["spec"]
        assert lease["leaseTransitions"] == 1
        apply(kube, name="second")
        wait_for(lambda: get_job(kube, NS, "second-validate"), timeout=30, what="validation Job from the new leader")
        assert "created Job" in b.log()
    finally:
        a.stop()
        b.stop()
