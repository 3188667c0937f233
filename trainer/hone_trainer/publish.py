"""Publishing the trained adapter (or model) with a manifest, atomically.

The files are written to a staging folder first; the manifest lists every
file with its SHA-256 and is written last. Locally (a PVC or ``hone run``)
the staging folder is renamed into place in one step, so a reader sees the
old result or the new one, never half of one. On S3 every file is uploaded
first and ``manifest.json`` last: readers (the server) only trust a
published model whose manifest exists and whose hashes verify, so a failed
upload leaves nothing that counts as published.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

from hone_trainer.storage import filesystem, upload_tree

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


def publish(staging: Path, output_uri: str, credentials_dir: str | None = None) -> str:
    """Move a complete staging folder (manifest included) to ``output_uri``; returns the artifact URI."""
    if not (staging / MANIFEST).exists():
        raise PublishError("refusing to publish a folder without its manifest")
    if output_uri.startswith("s3://"):
        return _publish_s3(staging, output_uri, credentials_dir)
    target = Path(output_uri.removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)  # a previous publish of this job (e.g. retried after publishing)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    return str(target)


def _publish_s3(staging: Path, output_uri: str, credentials_dir: str | None) -> str:
    fs, root = filesystem(output_uri, credentials_dir)
    root = root.rstrip("/")
    try:
        try:
            fs.rm(f"{root}/{MANIFEST}")  # unpublish first: from here on readers see no complete model
        except FileNotFoundError:
            pass
        upload_tree(fs, staging, root, skip=MANIFEST)
        fs.put_file(str(staging / MANIFEST), f"{root}/{MANIFEST}")
    except Exception as exc:
        raise PublishError(f"uploading to {output_uri} failed: {exc}") from exc
    return output_uri.rstrip("/")
