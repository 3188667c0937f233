"""``hone run``: a FineTuneJob manifest on this machine, with the same validator and trainer.

Locations in local mode:

* ``file:///abs/path``, ``file://relative/path`` and plain paths: relative to
  the manifest's folder;
* ``pvc://<claim>/<path>``: ``$HONE_PVC_ROOT/<claim>/<path>`` (default
  ``./.hone/pvc``), so a manifest written for a cluster runs unchanged;
* ``embedded://smollm2-135m-instruct``, Hugging Face ids and ``s3://`` as in a
  cluster;
* ``configMap: {name, key}``: the file that the ``configMapGenerator`` of that
  name in the ``kustomization.yaml`` beside the manifest puts under that key,
  so a folder applied with ``kubectl apply -k`` also runs with ``hone run``.

The published model goes to ``<output>/<namespace>/<name>/model`` and the
checkpoints beside it, as in a cluster; run the same command again after an
interrupt and training resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from hone_operator.api.v1alpha1 import DataSource, EvaluationSpec, FineTuneJob, parse_pvc_uri, uri_scheme
from hone_operator.builders.finetunejob import evaluation_config as ftj_evaluation_config, trainer_config
from hone_operator.settings import OperatorSettings
from hone_trainer import contract


class LocalSpecError(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


def pvc_root() -> Path:
    return Path(os.environ.get("HONE_PVC_ROOT", ".hone/pvc")).resolve()


def local_path(uri: str, base: Path, param: str) -> str:
    """A location as this machine sees it (remote URIs are kept as they are)."""
    scheme = uri_scheme(uri)
    if scheme == "pvc":
        claim, path = parse_pvc_uri(uri)
        return str(pvc_root() / claim / path)
    if scheme == "file":
        rest = uri.removeprefix("file://")
        return str((base / rest).resolve()) if not rest.startswith("/") else rest
    if scheme == "hf" and (uri.startswith((".", "/")) or (base / uri).exists()):
        return str((base / uri).resolve())
    return uri


def _data(src: DataSource | None, base: Path, param: str) -> contract.DataFile | None:
    if src is None:
        return None
    if src.configMap is not None:
        return contract.DataFile(location=str(kustomized_file(base, src.configMap.name, src.configMap.key,
                                                              f"{param}.configMap")))
    if src.inline is not None:
        return None  # written to a file by the caller
    if src.file is not None:
        raise LocalSpecError(f"{param}.file", f"{src.file} is a file uploaded to hone api in a cluster; `hone run` "
                                              "reads uri, configMap or inline: download it (client.files.content) "
                                              "and give its path as uri")
    assert src.uri is not None
    location = local_path(src.uri, base, f"{param}.uri")
    if "://" not in location and not Path(location).exists():
        raise LocalSpecError(f"{param}.uri", f"{location} does not exist")
    return contract.DataFile(location=location)


def kustomized_file(folder: Path, name: str, key: str, param: str) -> Path:
    """The file a kustomization's configMapGenerator puts under ``key`` of ConfigMap ``name``."""
    import yaml

    for candidate in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = folder / candidate
        if path.exists():
            break
    else:
        raise LocalSpecError(param, f"ConfigMap {name!r} exists only in a cluster; for `hone run`, list its files in "
                                    f"a configMapGenerator in {folder / 'kustomization.yaml'}, or give the data as "
                                    "uri: file://<path> (relative to the manifest)")
    doc = yaml.safe_load(path.read_text()) or {}
    for gen in doc.get("configMapGenerator") or []:
        if gen.get("name") != name:
            continue
        for entry in gen.get("files") or []:
            entry_key, sep, file = str(entry).partition("=")
            file = file if sep else entry_key
            entry_key = entry_key if sep else Path(file).name
            if entry_key == key:
                target = (folder / file).resolve()
                if not target.exists():
                    raise LocalSpecError(param, f"{path}: the file {file!r} for key {key!r} does not exist")
                return target
        raise LocalSpecError(param, f"{path}: configMapGenerator {name!r} has no file for key {key!r}")
    raise LocalSpecError(param, f"{path} has no configMapGenerator named {name!r}")


def base_model_source(spec_base: Any, base: Path) -> contract.ModelSource:
    """``spec.baseModel`` on this machine: a hub id as it is (without ``hf://``), anything else local."""
    uri = spec_base.uri
    location = uri.removeprefix("hf://") if uri_scheme(uri) == "hf" and "://" in uri else \
        local_path(uri, base, "spec.baseModel.uri")
    return contract.ModelSource(location=location, revision=spec_base.revision,
                                trust_remote_code=spec_base.trustRemoteCode)


def build_config(ftj: FineTuneJob, manifest: Path, workdir: Path, settings: OperatorSettings) -> contract.TrainerConfig:
    base = manifest.parent.resolve()
    spec = ftj.spec
    if spec.method == "qlora" and not _has_cuda():
        raise LocalSpecError("spec.method", "qlora needs an NVIDIA GPU (4-bit bitsandbytes kernels) and this "
                                            "machine has none; use method lora")
    ns, name = ftj.metadata.namespace or "local", ftj.metadata.name
    moderation = spec.dataScreening.moderation if spec.dataScreening else None
    _no_secret(moderation.apiKeySecret if moderation else None, "spec.dataScreening.moderation.apiKeySecret",
               "an endpoint")
    training = _data_file(spec.trainingData, base, "spec.trainingData", workdir / "training.jsonl")
    assert training is not None
    validation = _data_file(spec.validationData, base, "spec.validationData", workdir / "validation.jsonl")
    out = spec.output.uri
    root = local_path(out, base, "spec.output.uri")
    job_root = f"{root.rstrip('/')}/{ns}/{name}"
    return trainer_config(
        ftj, settings,
        base_model=base_model_source(spec.baseModel, base),
        training=training, validation=validation,
        output_uri=f"{job_root}/model", checkpoint_dir=f"{job_root}/checkpoints",
        progress=contract.ProgressReporting(kind="file", path=str(workdir / "progress.json"), interval_seconds=1.0),
        metrics_port=None, result_path=str(workdir / "result.json"),
        evaluation=evaluation_config(spec.evaluation, base, workdir),
    )


def _data_file(src: DataSource | None, base: Path, param: str, inline_path: Path) -> contract.DataFile | None:
    """A data source on this machine; inline data is written to ``inline_path``."""
    found = _data(src, base, param)
    if found is None and src is not None:
        inline_path.write_text(src.inline or "")
        found = contract.DataFile(location=str(inline_path))
    return found


def _no_secret(ref: Any, param: str, what: str) -> None:
    """An endpoint's token Secret (``param``) cannot be honoured on one machine."""
    if ref is not None:
        raise LocalSpecError(param, f"Secrets exist only in a cluster: on this machine, name {what} that needs no "
                                    "token")


def evaluation_config(spec: EvaluationSpec | None, base: Path, workdir: Path) -> contract.EvaluationConfig | None:
    """``spec.evaluation`` on this machine; without it, the safety suite alone (its defaults); None: nothing to run."""
    def locate(src: DataSource, which: str, param: str) -> contract.DataFile:
        found = _data_file(src, base, param, workdir / f"{which}.jsonl")
        assert found is not None
        return found

    _no_secret(spec.judge.apiKeySecret if spec is not None and spec.judge is not None else None,
               "spec.evaluation.judge.apiKeySecret", "a judge")
    return ftj_evaluation_config(spec, locate)


class ModelUnusable(Exception):
    """The base model (or its tokenizer or chat template) cannot be used; the message says why."""


def validate(config: contract.TrainerConfig) -> contract.ValidationResult:
    """The ValidatingFiles step on this machine, with the base model's own tokenizer and chat template
    (what ``hone validate``, ``hone run`` and ``hone api --local`` run)."""
    from hone_trainer import models
    from hone_trainer.training.formatting import TemplateError
    from hone_trainer.training.validate import validate as run_validation

    try:
        model = models.resolve(config.base_model)
        trust = config.base_model.trust_remote_code
        tokenizer = models.load_tokenizer(model, trust_remote_code=trust)
        return run_validation(config, tokenizer, models.shape_or_none(model, trust))
    except (models.ModelError, TemplateError) as exc:
        raise ModelUnusable(str(exc)) from exc


def local_gpus(spec: Any) -> int:
    """GPUs a local run of ``spec`` uses: as many as it asks for, as far as this machine has them."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    return min(spec.resources.gpusPerNode, gpus)


def processes(ftj: FineTuneJob) -> int:
    """One process per GPU the spec asks for, as far as this machine has them; one on a CPU machine."""
    return max(1, local_gpus(ftj.spec))


def train(config_path: Path, nproc: int, progress_path: Path, on_progress: Any,
          stop: threading.Event | None = None) -> int:
    """Run the trainer; Ctrl-C (or ``stop``, when set) asks it to checkpoint and stop (run again to resume):
    the exit code is then 130."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("DS_ACCELERATOR", "cuda" if nproc > 1 or _has_cuda() else "cpu")
    if nproc == 1:
        cmd = [sys.executable, "-m", "hone_trainer", "train", "--config", str(config_path)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "hone_trainer", "train", "--config", str(config_path)]
    log = open(config_path.parent / "trainer.log", "ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    # Ctrl-C or stop: the trainer (SIGTERM to its process group) checkpoints and exits.
    interrupted = _supervise(proc, stop, lambda: _read_progress(progress_path, on_progress)) is not None
    _read_progress(progress_path, on_progress)
    return 130 if interrupted else proc.returncode


def _supervise(proc: subprocess.Popen, stop: threading.Event | None, tick: Any = None) -> str | None:
    """Wait for ``proc`` (started in a session of its own), calling ``tick()`` every half second. Ctrl-C, or
    ``stop`` when set, sends SIGTERM to its process group and waits for it to exit; what ended it is returned
    ("stop" or "ctrl-c"), None when it exited by itself."""
    stop = stop or threading.Event()  # without one, only Ctrl-C stops it
    try:
        while proc.poll() is None:
            if tick is not None:
                tick()
            if stop.wait(0.5):
                why = "stop"
                break
        else:
            return None
    except KeyboardInterrupt:
        why = "ctrl-c"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait()
    return why


def answered(evaluation: contract.EvaluationConfig) -> str:
    """What the base model and the fine-tune answer in the evaluation step, in words (hone run, hone api)."""
    parts = (["the eval file"] if evaluation.eval_file else []) + (
        ["the safety suite"] if evaluation.safety.enabled else [])
    return " and ".join(parts)


def evaluate(config_path: Path, stop: threading.Event | None = None) -> tuple[int, contract.EvaluationResult | None]:
    """The evaluation step after training, in a process of its own (the trainer's memory is free again): its exit
    code, and its result (None when it wrote none). Its log goes to ``evaluation.log`` beside the config.
    ``stop``, when set, ends it (exit code 130, no result): it keeps nothing, so it runs again from the start."""
    result_path = config_path.parent / "evaluation.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "hone_trainer", "evaluate", "--config", str(config_path), "--result", str(result_path)]
    with open(config_path.parent / "evaluation.log", "ab") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        ended = _supervise(proc, stop)
    if ended == "ctrl-c":
        raise KeyboardInterrupt
    if ended == "stop":
        return 130, None
    rc = proc.returncode
    try:
        return rc, contract.EvaluationResult.model_validate_json(result_path.read_text())
    except (OSError, ValueError):
        return rc, None


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _read_progress(path: Path, on_progress: Any) -> None:
    try:
        on_progress(contract.Progress.model_validate(json.loads(path.read_text())))
    except (OSError, ValueError):
        pass


def clean(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------
# hone serve: a ModelServing (or a FineTuneJob's result) on this machine
# --------------------------------------------------------------------------


def published_artifact(namespace: str, name: str, workdir: Path, param: str) -> str:
    """Where `hone run` published FineTuneJob ``namespace/name`` (read from the result it wrote)."""
    result_file = workdir / namespace / name / "result.json"
    result = contract.parse_result(result_file.read_text() if result_file.exists() else None,
                                   contract.TrainingResult)
    if isinstance(result, contract.TrainingResult) and result.ok and result.artifact_uri:
        return result.artifact_uri
    raise LocalSpecError(param, f"FineTuneJob {name!r} (namespace {namespace!r}) has no published model on this "
                                f"machine (no result in {result_file}); run `hone run <its manifest>` first")


def safety_gate(config: contract.ServerConfig, override: bool) -> list[str]:
    """Refuse (LocalSpecError) to serve a fine-tune whose published manifest says its safety check failed, unless
    ``override``; returns the warnings to print when it does serve such a fine-tune."""
    warnings = []
    sources = [("spec.adapters", a.location) for a in config.adapters]
    sources.append(("spec.fineTuneJobRef", config.base_model.location))
    for param, location in sources:
        try:
            manifest = json.loads((Path(location) / "manifest.json").read_text())
        except (OSError, ValueError):
            continue  # not a published result (a base model, a hub id)
        gate = (manifest.get("evaluation") or {}).get("safety") or {}
        if gate.get("passed") is not False:
            continue
        why = contract.SafetyGate.model_validate(gate).failure(manifest.get("fineTunedModel") or location)
        if not override:
            raise LocalSpecError(param, f"{why}; not served. Fine-tune again with safer data, or pass "
                                        "--serve-despite-failed-safety-check to serve it anyway")
        warnings.append(f"{why}; serving it anyway (--serve-despite-failed-safety-check)")
    return warnings


def server_config(msv: Any, manifest: Path, workdir: Path, host: str, port: int,
                  api_keys_file: str | None) -> contract.ServerConfig:
    """The ServerConfig of a ModelServing manifest, with local paths for its FineTuneJobs' results."""
    base_dir = manifest.parent.resolve()
    ns = msv.metadata.namespace or "local"
    adapters: list[contract.AdapterSource] = []
    base: contract.ModelSource | None = None
    served_name: str | None = None
    sources: list[tuple[str, str | None, str | None, str | None]] = []  # (param, job, uri, name)
    if msv.spec.fineTuneJobRef is not None:
        sources.append(("spec.fineTuneJobRef", msv.spec.fineTuneJobRef.name, None, None))
    for i, a in enumerate(msv.spec.adapters or []):
        job = a.fineTuneJobRef.name if a.fineTuneJobRef else None
        sources.append((f"spec.adapters[{i}]", job, a.uri, a.name))
    for param, job, uri, name in sources:
        if job is None:
            assert uri is not None
            adapters.append(contract.AdapterSource(name=name, location=local_path(uri, base_dir, f"{param}.uri")))
            continue
        artifact = published_artifact(ns, job, workdir, param)
        if not (Path(artifact) / "adapter_config.json").exists():  # a full fine-tune is the base model
            if param != "spec.fineTuneJobRef":
                raise LocalSpecError(param, f"FineTuneJob {job!r} is a full fine-tune, not an adapter")
            base = contract.ModelSource(location=artifact)
            served_name = json.loads((Path(artifact) / "manifest.json").read_text()).get("fineTunedModel")
        else:
            adapters.append(contract.AdapterSource(name=name, location=artifact))
    if msv.spec.baseModel is not None:
        base = base_model_source(msv.spec.baseModel, base_dir)
    if base is None:
        from hone_trainer.serving import loading

        base = loading.base_from_adapters(adapters)
    return contract.ServerConfig(base_model=base, served_model_name=served_name, adapters=adapters, host=host,
                                 port=port, api_keys_file=api_keys_file,
                                 max_concurrent_requests=msv.spec.maxConcurrentRequests,
                                 special_tokens_in_content=msv.spec.specialTokensInContent)
