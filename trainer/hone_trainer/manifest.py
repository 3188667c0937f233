"""The manifest of a published folder: what makes a result trustworthy to both jobs.

The trainer writes ``manifest.json`` last when it publishes (every file with
its SHA-256 and size, plus the base model, data hash, config and token
counts); the server and ``fetch`` verify every hash before they load
anything. Shared by :mod:`hone_trainer.training.publish` and
:mod:`hone_trainer.serving.loading`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import IO, Any

MANIFEST = "manifest.json"


class PublishError(RuntimeError):
    pass


def sha256_stream(fp: IO[bytes]) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: fp.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fp:
        return sha256_stream(fp)


def write_manifest(folder: Path, info: dict[str, Any]) -> str:
    """Hash every file in ``folder`` into manifest.json; returns the manifest's own SHA-256."""
    files = {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    text = json.dumps({**info, "files": files}, indent=2, sort_keys=True)
    (folder / MANIFEST).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def verify(folder: Path) -> dict[str, Any]:
    """The manifest of a published folder, after checking every file's hash."""
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise PublishError(f"{folder} has no {MANIFEST}: it was never completely published")
    manifest = json.loads(manifest_path.read_text())
    for name, meta in manifest["files"].items():
        path = folder / name
        if not path.exists() or sha256_file(path) != meta["sha256"]:
            raise PublishError(f"{folder}/{name} does not match its manifest")
    return manifest
