"""The repository as the tooling sees it: CRDs, samples and the chart; CRD schemas as validators; helm."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from hone_dev import ROOT
from hone_dev.apiserver import to_jsonschema

CRDS = ROOT / "crds"
SAMPLES = CRDS / "samples"
CHART = ROOT / "charts" / "hone"


def load_sample(name: str) -> dict:
    return yaml.safe_load((SAMPLES / name).read_text())


def crd(name: str) -> dict[str, Any]:
    return yaml.safe_load((CRDS / f"{name}.hone.dev.yaml").read_text())


def schema_of(name: str) -> dict[str, Any]:
    return crd(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validator(name: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(to_jsonschema(schema_of(name)))


def tool_bin(name: str) -> str:
    """A command-line tool from PATH or from .tools/bin (what .ci/tools.sh fetches); skips the test without it."""
    found = shutil.which(name) or (str(ROOT / ".tools/bin" / name) if (ROOT / ".tools/bin" / name).exists() else None)
    if not found:
        pytest.skip(f"{name} is not installed: run bash .ci/tools.sh")
    return found


def helm_bin() -> str:
    return tool_bin("helm")


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm_bin(), *args], capture_output=True, text=True, timeout=120)


def render(values: Path | None = None, *extra: str) -> list[dict[str, Any]]:
    args = ["template", "hone", str(CHART), "-n", "hone-system", *extra]
    if values is not None:
        args += ["-f", str(values)]
    out = helm(*args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]
