"""Resumable, self-describing checkpoints that are never half-loaded.

Layout under ``checkpoint_dir``::

    step-00000050/            DeepSpeed's files (adapter or model shards,
                              optimizer and scheduler state), rng-rank<N>.pt
    step-00000050/model/      the checkpoint's servable model, as a result is
                              published (adapter or weights, tokenizer,
                              manifest.json): ModelServing's
                              fineTuneJobRef.checkpointStep serves it
    step-00000050/hone-complete.json   written last, atomically, by rank 0
                                       once every rank has saved

A directory without ``hone-complete.json`` is a save that was interrupted (a
crash, a SIGKILL, a lost node): resume ignores it and rank 0 deletes it.
The previous complete checkpoint is only pruned after the new one is
complete, so a good checkpoint always exists. LoRA checkpoints leave out the
frozen base model.

Loading never unpickles code. DeepSpeed's own loader calls ``torch.load`` with
``weights_only=False``, so whoever can write to the checkpoint folder (the
output PVC, or the bucket it is mirrored to) could run code in the trainer pod,
which holds the output's credentials. :func:`safe_checkpoint_engine` makes the
engine load with :func:`safe_load` instead: ``weights_only=True`` with an
allow-list of the four DeepSpeed classes its optimizer states hold
(:func:`deepspeed_state_classes`); anything else is refused with
:class:`UnsafeCheckpoint`, naming the file and the globals.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hone_trainer.contract import CHECKPOINT_MODEL_DIR
from hone_trainer.manifest import MANIFEST
from hone_trainer.storage import filesystem, upload_tree, write_atomically

MARKER = "hone-complete.json"


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint file holds objects that loading would have to run code for: it is not loaded."""


def deepspeed_state_classes() -> list[type]:
    """The classes DeepSpeed puts in optimizer states (loss scalers, the ZeRO stage, fragment maps):
    plain data, rebuilt by setting attributes (no ``__reduce__`` of their own)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, map_location: Any = None) -> Any:
    """``torch.load`` with ``weights_only=True`` and DeepSpeed's state classes allowed, and nothing else."""
    import pickle

    import torch

    allowed = deepspeed_state_classes()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        try:
            names = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
                           - {f"{c.__module__}.{c.__qualname__}" for c in allowed})
        except Exception:  # noqa: BLE001 - not a readable archive: say what torch said
            names = []
        what = ", ".join(names) if names else str(exc).splitlines()[0]
        raise UnsafeCheckpoint(
            f"checkpoint file {path} holds objects that loading would run code for ({what}); it was not "
            "loaded. Hone's checkpoints hold only tensors and plain data, so someone who can write to the "
            "checkpoint folder changed it: find out who, and delete that checkpoint folder to resume from "
            "the one before it") from None


def safe_checkpoint_engine(engine: Any) -> None:
    """Make a DeepSpeed engine load its checkpoints with :func:`safe_load` (saving is unchanged)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    current = getattr(engine, "checkpoint_engine", None)
    if not isinstance(current, TorchCheckpointEngine):
        raise RuntimeError(f"unexpected DeepSpeed checkpoint engine {type(current).__name__}: cannot make its "
                           "loads safe, so it is not used")

    current.load = safe_load  # every load of DeepSpeed's (model, optimizer, ZeRO states) goes through it


_TAG = re.compile(r"^step-(\d{8})$")


def tag(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    meta: dict[str, Any]


class CheckpointStore:
    def __init__(self, root: str | Path, keep: int):
        self.root = Path(root)
        self.keep = keep

    def _dirs(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            m = _TAG.match(child.name)
            if m and child.is_dir():
                found.append((int(m.group(1)), child))
        return sorted(found)

    def complete(self) -> list[Checkpoint]:
        out = []
        for step, path in self._dirs():
            marker = path / MARKER
            if marker.exists():
                try:
                    out.append(Checkpoint(path, step, json.loads(marker.read_text())))
                except (OSError, ValueError):
                    continue  # an unreadable marker is no marker
        return out

    def latest(self) -> Checkpoint | None:
        done = self.complete()
        return done[-1] if done else None

    def remove_incomplete(self) -> list[Path]:
        """Delete interrupted saves (rank 0 only, while no rank is saving)."""
        removed = []
        for _, path in self._dirs():
            if not (path / MARKER).exists():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    def mark_complete(self, step: int, meta: dict[str, Any]) -> Checkpoint:
        path = self.root / tag(step)
        write_atomically(path / MARKER, json.dumps({"step": step, **meta}, sort_keys=True))
        return Checkpoint(path, step, {"step": step, **meta})

    def prune(self) -> list[Path]:
        """Keep the newest ``keep`` complete checkpoints; never touch an incomplete one."""
        done = self.complete()
        removed = []
        for old in done[: max(0, len(done) - self.keep)]:
            # Unmark first: a crash halfway through deleting leaves an incomplete dir, never a broken "complete" one.
            (old.path / MARKER).unlink(missing_ok=True)
            shutil.rmtree(old.path, ignore_errors=True)
            removed.append(old.path)
        return removed


class RemoteMirror:
    """Complete checkpoints mirrored to an object store (``s3://``), for pods without a PVC.

    DeepSpeed writes to local files; after a save every node uploads the
    files it wrote, and only then rank 0 uploads the marker, so the remote
    copy follows the same rule as the local one: no marker, no checkpoint.
    A new pod downloads the newest remotely complete checkpoint before it
    resumes.
    """

    def __init__(self, uri: str, credentials_dir: str | None):
        self.uri = uri.rstrip("/")
        self.fs, self.root = filesystem(self.uri, credentials_dir)
        self.root = self.root.rstrip("/")

    def _tags(self) -> list[tuple[int, str]]:
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            m = _TAG.match(entry.rstrip("/").rsplit("/", 1)[-1])
            if m:
                found.append((int(m.group(1)), entry.rstrip("/")))
        return sorted(found)

    def complete(self) -> list[int]:
        return [step for step, path in self._tags() if self.fs.exists(f"{path}/{MARKER}")]

    def checkpoints(self) -> list[tuple[int, dict[str, Any], bool]]:
        """(step, marker, servable) of every remotely complete checkpoint, oldest first; ``servable``: its
        exported model's manifest is there."""
        out = []
        for step, path in self._tags():
            try:
                meta = json.loads(self.fs.cat_file(f"{path}/{MARKER}"))
            except (FileNotFoundError, ValueError):
                continue
            out.append((step, meta, self.fs.exists(f"{path}/{CHECKPOINT_MODEL_DIR}/{MANIFEST}")))
        return out

    def upload(self, local: Path) -> None:
        upload_tree(self.fs, local, f"{self.root}/{local.name}", skip=MARKER)

    def mark(self, local: Path) -> None:
        self.fs.put_file(str(local / MARKER), f"{self.root}/{local.name}/{MARKER}")

    def download(self, step: int, local_root: Path) -> Path:
        target = local_root / tag(step)
        if (target / MARKER).exists():
            return target
        staging = local_root / f".{tag(step)}.download"
        shutil.rmtree(staging, ignore_errors=True)
        remote = f"{self.root}/{tag(step)}"  # fsspec paths carry no scheme, like self.root
        for path in self.fs.find(remote):
            dest = staging / path[len(remote):].lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(path, str(dest))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)  # the marker came with the files: complete locally too
        return target

    def remove_incomplete(self) -> None:
        for step, path in self._tags():
            if not self.fs.exists(f"{path}/{MARKER}"):
                self.fs.rm(path, recursive=True)

    def prune(self, keep: int) -> None:
        done = self.complete()
        for step in done[: max(0, len(done) - keep)]:
            path = f"{self.root}/{tag(step)}"
            self.fs.rm(f"{path}/{MARKER}")  # unmark first, then delete
            self.fs.rm(path, recursive=True)
