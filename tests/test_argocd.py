"""Argo CD health checks (charts/hone/argocd/*.lua) run in a real Lua interpreter (lupa)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

lupa = pytest.importorskip("lupa", reason="lupa (a Lua interpreter) comes with the test extra")

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "charts" / "hone" / "argocd"


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run the script the way Argo CD does: `obj` is a global table, the script returns hs."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)

    def table(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: table(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([table(v) for v in value])
        return value

    lua.globals().obj = table(obj)
    hs = lua.execute((SCRIPTS / script).read_text())
    return hs["status"], hs["message"]


def ftj(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "j", "generation": generation}, "status": status}


@pytest.mark.parametrize("status,generation,expected,message", [
    (None, 1, "Progressing", "Waiting for the Hone operator"),
    ({"phase": "Succeeded", "observedGeneration": 1}, 2, "Progressing", "latest spec"),
    ({"phase": "ValidatingFiles", "observedGeneration": 1}, 1, "Progressing", "ValidatingFiles"),
    ({"phase": "Queued", "observedGeneration": 1}, 1, "Progressing", "Queued"),
    ({"phase": "Queued", "observedGeneration": 1, "conditions": [
        {"type": "Running", "status": "False", "reason": "InsufficientMemory"},
        {"type": "MemoryFits", "status": "False", "reason": "InsufficientMemory",
         "message": "estimated 60.3Gi per GPU ...; would fit: spec.method: qlora (12.6Gi)"}]}, 1,
     "Degraded", "would fit: spec.method: qlora"),
    ({"phase": "Queued", "observedGeneration": 1, "conditions": [
        {"type": "BudgetAdmitted", "status": "False", "reason": "InsufficientBudget",
         "message": "needs 600,000 training tokens ...; It starts by itself ... when the day resets"}]}, 1,
     "Progressing", "Queued: needs 600,000 training tokens"),
    ({"phase": "Running", "observedGeneration": 1, "progress": {"percent": 40}}, 1, "Progressing", "Training: 40%"),
    ({"phase": "Suspended", "observedGeneration": 1}, 1, "Suspended", "spec.suspend"),
    ({"phase": "Cancelled", "observedGeneration": 1}, 1, "Suspended", "Cancelled"),
    ({"phase": "Succeeded", "observedGeneration": 1, "fineTunedModel": {"name": "ft:smollm2:team-a::ab12"}}, 1,
     "Healthy", "ft:smollm2:team-a::ab12"),
    ({"phase": "Failed", "observedGeneration": 1,
      "error": {"code": "invalid_training_file", "message": "training line 3: invalid JSON"}}, 1,
     "Degraded", "training line 3: invalid JSON"),
])
def test_finetunejob_health(status, generation, expected, message) -> None:
    got, text = health("finetunejob-health.lua", ftj(status, generation))
    assert got == expected and message in text


def msv(phase: str | None, ready: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    status = None if phase is None else {"phase": phase, "observedGeneration": 1, "url": "http://s.team-a.svc/v1",
                                         "conditions": [ready] if ready else []}
    return {"metadata": {"name": "s", "generation": generation}, "status": status}


@pytest.mark.parametrize("obj,expected,message", [
    (msv(None), "Progressing", "Waiting for the Hone operator"),
    (msv("Ready", generation=3), "Progressing", "latest spec"),
    (msv("Waiting", {"type": "Ready", "status": "False", "reason": "WaitingForFineTuneJob",
                     "message": "FineTuneJob 'j' is Running"}), "Progressing", "FineTuneJob 'j' is Running"),
    (msv("Deploying", {"type": "Ready", "status": "False", "reason": "Deploying", "message": "0/1 replicas ready"}),
     "Progressing", "0/1 replicas ready"),
    (msv("Ready", {"type": "Ready", "status": "True", "reason": "Available", "message": "1/1"}), "Healthy",
     "http://s.team-a.svc/v1"),
    (msv("Pending", {"type": "Ready", "status": "False", "reason": "ScaledToZero", "message": "spec.replicas is 0"}),
     "Suspended", "spec.replicas is 0"),
    (msv("Failed", {"type": "Ready", "status": "False", "reason": "CrossNamespaceReference",
                    "message": "spec.fineTuneJobRef points into namespace 'x'"}), "Degraded", "points into namespace"),
])
def test_modelserving_health(obj, expected, message) -> None:
    got, text = health("modelserving-health.lua", obj)
    assert got == expected and message in text
