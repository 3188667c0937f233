"""Loading what a server serves: the base model and the published LoRA adapters.

An adapter is a folder the trainer published (``manifest.json`` lists every
file with its SHA-256). Before it is served the manifest is checked: every
hash must verify, the adapter must have been trained on the base model this
server loads, and the weights must be safetensors. Anything else stops the
server with a message naming the adapter and what to do.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hone_trainer import models
from hone_trainer.contract import AdapterSource, ModelSource, ServerConfig, default_served_name, normalise_location
from hone_trainer.manifest import MANIFEST, PublishError, verify

log = logging.getLogger("hone.serving")


class ServingError(RuntimeError):
    """The server cannot serve what its config asks for; retrying will not help."""


@dataclass
class Artifact:
    """A verified published folder on the local filesystem."""

    path: Path
    manifest: dict[str, Any]
    source: str

    @property
    def fine_tuned_model(self) -> str | None:
        return self.manifest.get("fineTunedModel")

    @property
    def is_adapter(self) -> bool:
        return (self.path / "adapter_config.json").exists()

    @property
    def base(self) -> dict[str, Any]:
        return self.manifest.get("baseModel") or {}


def download_published(location: str, credentials_dir: str | None) -> Path:
    """A published ``s3://`` folder in the local cache, fetched afresh: its manifest, then every file the manifest
    lists (subfolders included) but ``merged/`` (a full merged model, which serving an adapter does not read).
    A name that would leave the folder is refused."""
    import json

    from hone_trainer.storage import filesystem

    fs, root = filesystem(location, credentials_dir)
    root = root.rstrip("/")
    target = models.s3_cache_dir(location)
    shutil.rmtree(target, ignore_errors=True)  # a model may have been published again under the same URI
    target.mkdir(parents=True)
    top = target.resolve()
    try:
        fs.get(f"{root}/{MANIFEST}", str(target / MANIFEST))
        names = list(json.loads((target / MANIFEST).read_text()).get("files") or {})
    except FileNotFoundError:
        raise ServingError(f"{location} has no {MANIFEST}: it was never completely published") from None
    except (OSError, ValueError) as exc:
        raise ServingError(f"could not read {location}/{MANIFEST}: {exc}") from exc
    for name in names:
        if name.split("/", 1)[0] == "merged":
            continue
        dest = (target / name).resolve()
        if top not in dest.parents:
            raise ServingError(f"{location}/{MANIFEST} lists {name!r}, which is not inside the folder; publish it "
                               "again (re-run the FineTuneJob)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get(f"{root}/{name}", str(dest))
        except (OSError, ValueError) as exc:
            raise ServingError(f"could not fetch {location}/{name}: {exc}") from exc
    return target


def local_artifact(location: str, credentials_dir: str | None = None) -> Artifact:
    """Fetch (S3) or find (a directory) a published folder and verify it against its manifest."""
    without: tuple[str, ...] = ()
    if location.startswith("s3://"):
        folder = download_published(location, credentials_dir)
        without = ("merged",)
    else:
        folder = Path(location.removeprefix("file://"))
        if not folder.is_dir():
            raise ServingError(f"{location}: no such directory; point it at a folder `hone run` or a "
                               "FineTuneJob published (it holds manifest.json)")
    try:
        manifest = verify(folder, without=without)
    except PublishError as exc:
        raise ServingError(f"{location}: {exc}; publish it again (re-run the FineTuneJob) "
                           "instead of editing its files") from exc
    if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
        raise ServingError(f"{location}: holds pickled weights (*.bin/*.pt); Hone loads safetensors only")
    return Artifact(folder, manifest, location)


def fetch_to(artifact: Artifact, target: Path) -> Path:
    """Copy a verified artifact (the files its manifest lists, without ``merged/``) into ``target`` for a
    runtime that reads files, and verify the copy."""
    try:
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in artifact.manifest["files"]:
            if name.split("/", 1)[0] == "merged":
                continue
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifact.path / name, target / name, follow_symlinks=False)
        shutil.copyfile(artifact.path / MANIFEST, target / MANIFEST, follow_symlinks=False)
        verify(target, without=("merged",))
    except (OSError, PublishError) as exc:
        raise ServingError(f"{artifact.source}: copying it to {target} failed: {exc}") from exc
    return target


@dataclass
class Served:
    """Everything loaded: the model (a PeftModel when there are adapters) and the name table."""

    model: Any
    tokenizer: Any
    base_name: str
    #: served name -> peft adapter name (``__base__`` for the base model)
    names: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    eos_token_ids: list[int] = field(default_factory=list)


def check_base(artifact: Artifact, base: ModelSource, name: str) -> None:
    trained_on = artifact.base.get("location")
    if trained_on is None:
        raise ServingError(f"adapter {name}: its manifest names no base model")
    if normalise_location(trained_on) != normalise_location(base.location):
        raise ServingError(
            f"adapter {name} was trained on base model {trained_on!r}, but this server loads "
            f"{base.location!r}; serve it on the base it was trained on")
    rev = artifact.base.get("revision")
    if rev and base.revision and rev != base.revision:
        raise ServingError(f"adapter {name} was trained on revision {rev!r} of the base model, "
                           f"this server loads revision {base.revision!r}")


def resolve_adapters(config: ServerConfig) -> list[tuple[str, Artifact]]:
    out: list[tuple[str, Artifact]] = []
    for i, src in enumerate(config.adapters):
        art = local_artifact(src.location, src.credentials_dir)
        name = src.name or art.fine_tuned_model or f"adapter-{i}"
        if not art.is_adapter:
            raise ServingError(
                f"adapters[{i}] ({src.location}) is a full fine-tune, not a LoRA adapter: serve it as the "
                "base model instead")
        check_base(art, config.base_model, name)
        out.append((name, art))
    names = [n for n, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ServingError(f"two adapters are served under the same name {dupes[0]!r}; give each its own name")
    return out


def load(config: ServerConfig) -> Served:
    """Load the base model, its tokenizer and every adapter (verified) for inference."""
    import torch

    adapters = resolve_adapters(config)
    try:
        local = models.resolve(config.base_model)
        tokenizer = models.load_tokenizer(local, trust_remote_code=config.base_model.trust_remote_code)
        device, dtype = device_and_dtype()
        model = models.load_model(local, dtype, trust_remote_code=config.base_model.trust_remote_code)
    except models.ModelError as exc:
        raise ServingError(str(exc)) from exc
    model.to(device)
    model.eval()
    base_name = config.served_model_name or default_served_name(config.base_model.location)
    names = {base_name: "__base__"}
    artifacts: dict[str, Artifact] = {}
    if adapters:
        from peft import PeftModel

        for i, (name, art) in enumerate(adapters):
            if name in names:
                raise ServingError(f"adapter name {name!r} is also the base model's name; rename one of them")
            internal = f"adapter{i}"  # peft names become module keys: no dots or colons
            if i == 0:
                model = PeftModel.from_pretrained(model, str(art.path), adapter_name=internal, is_trainable=False)
            else:
                model.load_adapter(str(art.path), adapter_name=internal, is_trainable=False)
            names[name] = internal
            artifacts[name] = art
            log.info("loaded adapter %s from %s", name, art.source)
        model.to(device)
        model.eval()
    eos = _eos_ids(model, tokenizer)
    return Served(model, tokenizer, base_name, names, artifacts, eos)


def device_and_dtype() -> tuple[str, Any]:
    """Where and in what precision the server runs the model: a GPU in bfloat16 (float16 where the GPU has no
    bfloat16), else the CPU in float32."""
    import torch

    if torch.cuda.is_available():
        return "cuda", (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return "cpu", torch.float32


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(src, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def adapter_sources_from_args(items: list[str]) -> list[AdapterSource]:
    """``NAME=LOCATION`` or ``LOCATION`` (served under the manifest's fine-tuned model name)."""
    out = []
    for item in items:
        name, sep, location = item.partition("=")
        if sep and "://" not in name and not name.startswith("/"):
            out.append(AdapterSource(name=name, location=location))
        else:
            out.append(AdapterSource(location=item))
    return out


def base_from_adapters(config_adapters: list[AdapterSource]) -> ModelSource:
    """The base model the first adapter was trained on (when no base is given)."""
    if not config_adapters:
        raise ServingError("nothing to serve: give a base model or at least one adapter")
    art = local_artifact(config_adapters[0].location, config_adapters[0].credentials_dir)
    base = art.base
    if not base.get("location"):
        raise ServingError(f"{config_adapters[0].location}: its manifest names no base model")
    return ModelSource(location=base["location"], revision=base.get("revision"))
