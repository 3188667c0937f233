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

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hone_trainer import contract
from hone_trainer.manifest import MANIFEST, PublishError, sha256_stream
from hone_trainer.storage import filesystem, open_binary, upload_tree


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


def staging_dir(output_uri: str) -> Path:
    """An empty folder to assemble the result in: beside a local output, so that publishing
    is one atomic rename; for a remote output, in TMPDIR."""
    local = "://" not in output_uri or output_uri.startswith("file://")
    target = (Path(output_uri.removeprefix("file://")) if local
              else Path(os.environ.get("TMPDIR", "/tmp")) / "hone-out")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def sha256_of(location: contract.DataFile | None) -> str | None:
    if location is None:
        return None
    with open_binary(location.location, location.credentials_dir) as fp:
        return sha256_stream(fp)


def manifest_info(cfg: contract.TrainerConfig, hp: contract.ResolvedHyperparameters, *, examples: int,
                  validation_examples: int, trained_tokens: int, train_loss: float | None,
                  val_loss: float | None, steps: int, train_curve: list[contract.LossPoint] = (),
                  validation_curve: list[contract.LossPoint] = (), fine_tuned_model: str | None = None,
                  data_hashes: tuple[str | None, str | None] | None = None) -> dict[str, Any]:
    """What the manifest says of a published model besides its files' hashes. ``fine_tuned_model``: the name
    it is served by (default: the job's; a checkpoint's is its own); ``data_hashes``: the training and
    validation files' SHA-256, when known already."""
    training_sha, validation_sha = data_hashes or (sha256_of(cfg.training_data), sha256_of(cfg.validation_data))
    return {
        "apiVersion": "hone.dev/v1alpha1", "kind": "HoneModel",
        "fineTunedModel": fine_tuned_model or cfg.job.fine_tuned_model,
        "baseModel": {"location": cfg.base_model.location, "revision": cfg.base_model.revision},
        "method": cfg.method,
        "dataset": {"trainingSha256": training_sha, "validationSha256": validation_sha,
                    "examples": examples, "validationExamples": validation_examples},
        "hyperparameters": hp.to_json_dict(),
        "config": cfg.to_json_dict(),
        "tokens": {"trained": trained_tokens},
        "losses": {"train": train_loss, "validation": val_loss,
                   "trainCurve": [p.to_json_dict() for p in train_curve],
                   "validationCurve": [p.to_json_dict() for p in validation_curve]},
        "steps": steps,
        "createdAt": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }
