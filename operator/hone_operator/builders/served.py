"""What a ModelServing serves: its FineTuneJob and URI references resolved into a server config.

The referenced FineTuneJobs must have Succeeded; their published artifacts
are mounted where the pod finds them (a PVC read-only at the path the trainer
published to, so the manifest's base model matches the one served), and all
adapters on one server must share one base model. Anything else is
:class:`Waiting` (a job not ready yet) or a :class:`SpecError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hone_operator.api.v1alpha1 import FineTuneJob, FineTuneJobPhase, ModelServing, parse_pvc_uri, uri_scheme
from hone_operator.builders.common import SpecError
from hone_operator.builders.storage import Storage, base_model_source, in_cluster
from hone_operator.settings import OperatorSettings
from hone_trainer import contract

#: Rank assumed for an adapter given by URI (its rank is not in any spec the operator reads).


class Waiting(Exception):
    """A referenced FineTuneJob is not ready; ``reason`` is the condition reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Resolved:
    """What the pods serve, as they see it."""

    config: contract.ServerConfig
    storage: Storage
    #: each adapter's LoRA rank where a spec says it (a FineTuneJob's spec.lora.r); None for an adapter
    #: given by URI, whose rank only its adapter_config.json says
    lora_ranks: list[int | None] = field(default_factory=list)
    #: S3 adapters that an init step fetches (vLLM only): index in config.adapters
    remote_adapters: list[int] = field(default_factory=list)
    #: model names clients request: the base, then each adapter (status.servedModels)
    names: list[str] = field(default_factory=list)


def referenced_jobs(msv: ModelServing) -> list[tuple[str, str]]:
    """(field, FineTuneJob name) of every FineTuneJob the spec serves."""
    refs = []
    if msv.spec.fineTuneJobRef is not None:
        refs.append(("spec.fineTuneJobRef", msv.spec.fineTuneJobRef.name))
    for i, a in enumerate(msv.spec.adapters or []):
        if a.fineTuneJobRef is not None:
            refs.append((f"spec.adapters[{i}].fineTuneJobRef", a.fineTuneJobRef.name))
    return refs


def _succeeded(param: str, name: str, ftjs: dict[str, dict[str, Any] | None]) -> FineTuneJob:
    body = ftjs.get(name)
    if body is None:
        raise Waiting("FineTuneJobNotFound", f"FineTuneJob {name!r} ({param}) does not exist in this namespace; "
                                             "the ModelServing waits for it")
    phase = (body.get("status") or {}).get("phase")
    if phase in (FineTuneJobPhase.FAILED.value, FineTuneJobPhase.CANCELLED.value):
        raise Waiting("FineTuneJobFailed", f"FineTuneJob {name!r} ({param}) is {phase}: it has no model to "
                                           "serve; point the ModelServing at a Succeeded FineTuneJob")
    if phase != FineTuneJobPhase.SUCCEEDED.value:
        raise Waiting("FineTuneJobNotSucceeded", f"FineTuneJob {name!r} ({param}) is {phase or 'Pending'}; "
                                                 "serving starts when it has Succeeded")
    ftj = FineTuneJob.model_validate(body)
    if ftj.status.fineTunedModel is None or not ftj.status.fineTunedModel.artifactUri:
        raise Waiting("FineTuneJobHasNoArtifact", f"FineTuneJob {name!r} ({param}) has Succeeded but records no "
                                                  "published artifact (status.fineTunedModel.artifactUri)")
    return ftj


def _checkpoint(ftj: FineTuneJob, step: int, param: str) -> contract.CheckpointInfo:
    """The Succeeded job's servable checkpoint of ``step``; a :class:`SpecError` naming what there is else."""
    kept = {c.step: c for c in ftj.status.checkpoints or []}
    ckpt = kept.get(step)
    if ckpt is None:
        have = ", ".join(str(s) for s in sorted(kept)) or "none"
        raise SpecError(param, f"FineTuneJob {ftj.metadata.name!r} keeps no checkpoint of step {step} (its "
                               f"checkpoints: {have}); serve one of those, or leave checkpointStep out for the "
                               "final model")
    if not ckpt.model_uri:
        raise SpecError(param, f"checkpoint step {step} of FineTuneJob {ftj.metadata.name!r} has no servable model "
                               "(it was written with spec.checkpointing.servable false); serve the final model")
    return ckpt


def _artifact_location(ftj: FineTuneJob, storage: Storage, param: str,
                       artifact: str | None = None) -> tuple[str, str | None]:
    """Where the pod finds the FineTuneJob's artifact (or ``artifact``, a checkpoint's model under the same
    output), and the credentials folder for S3."""
    artifact = artifact or ftj.status.fineTunedModel.artifactUri  # type: ignore[union-attr]
    out = ftj.spec.output.uri
    if uri_scheme(out) == "pvc":
        claim, _ = parse_pvc_uri(out)
        mount = storage.pvc(claim, writable=False)
        if uri_scheme(artifact) == "pvc" and parse_pvc_uri(artifact)[0] == claim:
            return storage.pvc_path(artifact), None
        if not artifact.startswith(mount + "/"):
            raise SpecError(param, f"FineTuneJob {ftj.metadata.name!r} published to {artifact!r}, outside its "
                                   f"output claim {claim!r}")
        return artifact, None
    if uri_scheme(out) == "s3":
        return artifact, storage.secret(ftj.spec.output.credentialsSecret)
    raise SpecError(param, f"FineTuneJob {ftj.metadata.name!r} published to {out!r}, which a cluster cannot read")


def _uri_location(uri: str, storage: Storage, param: str) -> str:
    in_cluster(uri, param)
    return storage.pvc_path(uri) if uri_scheme(uri) == "pvc" else uri


@dataclass
class _Collected:
    """What a ModelServing's references resolve to, collected in spec order."""

    storage: Storage = field(default_factory=Storage)
    adapters: list[contract.AdapterSource] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # the adapters' served names, as the server names them
    ranks: list[int | None] = field(default_factory=list)
    trained_on: list[tuple[str, FineTuneJob]] = field(default_factory=list)  # (param, job) of job adapters
    base: contract.ModelSource | None = None
    base_uri: str = ""  # the spec.baseModel.uri the prices are looked up by (settings.prices_for)
    served_name: str | None = None

    def job_adapter(self, param: str, ftj: FineTuneJob, name: str | None = None, step: int | None = None) -> None:
        """The job's adapter, or with ``step`` its checkpoint's (named ``<model>:ckpt-step-N`` by default)."""
        model = ftj.status.fineTunedModel.name  # type: ignore[union-attr]
        artifact = None
        if step is not None:
            artifact = _checkpoint(ftj, step, f"{param}.checkpointStep").model_uri
            model = contract.checkpoint_model_name(model, step)
        location, creds = _artifact_location(ftj, self.storage, param, artifact)
        name = name or (model if step is not None else None)
        self.adapters.append(contract.AdapterSource(name=name, location=location, credentials_dir=creds))
        self.names.append(name or model)
        self.ranks.append(ftj.spec.lora.r)
        self.trained_on.append((param, ftj))

    def uri_adapter(self, param: str, uri: str, name: str | None) -> None:
        self.adapters.append(contract.AdapterSource(name=name, location=_uri_location(uri, self.storage, param)))
        self.names.append(name or f"adapter-{len(self.adapters) - 1}")
        self.ranks.append(None)


def resolve(msv: ModelServing, ftjs: dict[str, dict[str, Any] | None], settings: OperatorSettings) -> Resolved:
    """The server config as the pods see it. Raises :class:`Waiting` or :class:`SpecError`."""
    spec = msv.spec
    got = _Collected()
    if spec.fineTuneJobRef is not None:
        _fine_tune_job_ref(got, spec.fineTuneJobRef.name, spec.fineTuneJobRef.checkpointStep,
                           "spec.adapters" if spec.adapters else "spec.serveCheckpoints" if spec.serveCheckpoints
                           else None, ftjs)
        if spec.serveCheckpoints:
            _checkpoints(got, spec.fineTuneJobRef.name, spec.fineTuneJobRef.checkpointStep, ftjs)
    elif spec.serveCheckpoints:
        raise SpecError("spec.serveCheckpoints", "serveCheckpoints serves the checkpoints of spec.fineTuneJobRef, "
                        "which is not set")
    for i, a in enumerate(spec.adapters or []):
        param = f"spec.adapters[{i}]"
        if a.fineTuneJobRef is not None:
            ftj = _succeeded(f"{param}.fineTuneJobRef", a.fineTuneJobRef.name, ftjs)
            if ftj.spec.method == "full":
                raise SpecError(f"{param}.fineTuneJobRef", f"FineTuneJob {ftj.metadata.name!r} is a full "
                                "fine-tune, not an adapter: serve it in its own ModelServing")
            got.job_adapter(f"{param}.fineTuneJobRef", ftj, a.name, a.fineTuneJobRef.checkpointStep)
        else:
            assert a.uri is not None
            got.uri_adapter(f"{param}.uri", a.uri, a.name)
    base = _base_model(spec, got)
    keys = got.storage.secret(spec.apiKeySecret)
    config = contract.ServerConfig(
        base_model=base, served_model_name=got.served_name, adapters=got.adapters, host="0.0.0.0", port=contract.SERVER_PORT,
        api_keys_file=f"{keys}/api-keys" if keys else None, max_concurrent_requests=spec.maxConcurrentRequests,
        special_tokens_in_content=spec.specialTokensInContent, prices=settings.prices_for(got.base_uri),
        quota=contract.QuotaSettings(url=settings.quota_url, report_seconds=settings.quota_report_seconds)
        if settings.quota_url and spec.runtime == "hone" else None)
    remote = [i for i, a in enumerate(got.adapters) if a.location.startswith("s3://")]
    names = [got.served_name or contract.default_served_name(base.location), *got.names]
    return Resolved(config, got.storage, got.ranks, remote, names)


def _fine_tune_job_ref(got: _Collected, name: str, step: int | None, more_adapters: str | None,
                       ftjs: dict[str, dict[str, Any] | None]) -> None:
    """spec.fineTuneJobRef: its adapter (or its checkpoint's), or for a full fine-tune the model served as
    the base; ``more_adapters``: the field that asks for adapters beside it, if one does."""
    param = "spec.fineTuneJobRef"
    ftj = _succeeded(param, name, ftjs)
    if ftj.spec.method != "full":
        got.job_adapter(param, ftj, step=step)
        return
    if more_adapters:
        raise SpecError(more_adapters, f"FineTuneJob {ftj.metadata.name!r} is a full fine-tune: it is served as the base "
                        "model and cannot carry adapters (its checkpoints are served one per ModelServing, with "
                        "spec.fineTuneJobRef.checkpointStep)")
    model = ftj.status.fineTunedModel.name  # type: ignore[union-attr]
    artifact = None
    if step is not None:
        artifact = _checkpoint(ftj, step, f"{param}.checkpointStep").model_uri
        model = contract.checkpoint_model_name(model, step)
    location, creds = _artifact_location(ftj, got.storage, param, artifact)
    got.base = contract.ModelSource(location=location, credentials_dir=creds)
    got.base_uri = ftj.spec.baseModel.uri
    got.served_name = model


def _checkpoints(got: _Collected, name: str, served_step: int | None, ftjs: dict[str, dict[str, Any] | None]) -> None:
    """spec.serveCheckpoints: every servable checkpoint of spec.fineTuneJobRef's job (but the one it serves)."""
    ftj = _succeeded("spec.fineTuneJobRef", name, ftjs)
    for ckpt in sorted(ftj.status.checkpoints or [], key=lambda c: c.step):
        if ckpt.model_uri and ckpt.step != served_step:
            got.job_adapter("spec.serveCheckpoints", ftj, step=ckpt.step)


def _base_model(spec: Any, got: _Collected) -> contract.ModelSource:
    """spec.baseModel, else the full fine-tune, else the one base every job adapter was trained on; its
    ``spec.baseModel.uri`` (for a full fine-tune, the model it was trained from) goes into ``got.base_uri``."""
    if spec.baseModel is not None:
        got.base_uri = spec.baseModel.uri
        return base_model_source(spec.baseModel, got.storage, "spec.baseModel.uri")
    if got.base is not None:
        return got.base
    if not got.trained_on:
        raise SpecError("spec.baseModel", "no base model: set spec.baseModel (adapters given by URI do not say "
                        "which base they were trained on)")
    first_param, first = got.trained_on[0]
    for param, other in got.trained_on[1:]:
        if other.spec.baseModel.uri != first.spec.baseModel.uri:
            raise SpecError(param, f"{param} was trained on {other.spec.baseModel.uri!r} but {first_param} on "
                            f"{first.spec.baseModel.uri!r}: adapters on one server share one base model")
    got.base_uri = first.spec.baseModel.uri
    return base_model_source(first.spec.baseModel, got.storage, f"{first_param} baseModel")
