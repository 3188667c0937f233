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


def verify(folder: Path, without: tuple[str, ...] = ()) -> dict[str, Any]:
    """The manifest of a published folder, after checking it covers exactly the folder's files.

    Refused (:class:`PublishError`, naming the file): a manifest that is not valid JSON or not of
    the shape the trainer writes; an entry that is absolute or has ``..`` (it would hash a file
    outside the folder); a listed file that is missing or whose size or SHA-256 differ; a file in
    the folder the manifest does not list (an unlisted ``adapter_model.safetensors`` would be
    loaded unverified); and any symbolic link in the folder (a link can point anywhere, and a
    copy would follow it). ``without`` names top-level subfolders a copy left out on purpose
    (``merged`` for a runtime that reads only the adapter): their entries are not looked for.
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise PublishError(f"{folder} has no {MANIFEST}: it was never completely published")
    manifest = _read(manifest_path)
    files: dict[str, Any] = manifest["files"]
    expected = {name: meta for name, meta in files.items() if name.split("/", 1)[0] not in without}
    present: set[str] = set()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise PublishError(f"{folder}/{rel} is a symbolic link; a published folder holds plain files only")
        if path.is_file() and rel != MANIFEST:
            present.add(rel)
    unlisted = sorted(present - set(expected))
    if unlisted:
        raise PublishError(f"{folder}/{unlisted[0]} is not in its manifest ({len(unlisted)} unlisted file(s))")
    for name, meta in expected.items():
        path = folder / name
        if name not in present or path.stat().st_size != meta["bytes"] or sha256_file(path) != meta["sha256"]:
            raise PublishError(f"{folder}/{name} does not match its manifest")
    return manifest


def _read(path: Path) -> dict[str, Any]:
    """manifest.json, checked to be of the shape :func:`write_manifest` writes."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PublishError(f"{path} is not valid JSON: {exc}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise PublishError(f"{path} has no \"files\" object listing the published files")
    for name, meta in files.items():
        parts = name.split("/")
        if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts) \
                or name == MANIFEST:
            raise PublishError(f"{path}: entry {name[:200]!r} is not a plain path inside the folder")
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and len(meta["sha256"]) == 64
                and isinstance(meta.get("bytes"), int) and not isinstance(meta["bytes"], bool) and meta["bytes"] >= 0):
            raise PublishError(f"{path}: entry {name[:200]!r} needs a sha256 (64 hex digits) and bytes (an integer)")
    return manifest
