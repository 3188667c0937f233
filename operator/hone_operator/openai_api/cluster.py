"""``hone api`` in a cluster: Kubernetes is the state, the caller's RBAC decides, an object store holds the bytes.

* **Identity.** A bearer token is checked with a TokenReview (a ServiceAccount token, or any token the
  cluster's authenticators accept, e.g. OIDC), unless it is one of the API keys of the key identities
  file (a Secret listing each key's SHA-256 with the user and groups it stands for, so long-lived
  ``sk-…``-style keys keep working and RBAC still decides). The project is the ``OpenAI-Project``
  header, else the ServiceAccount's (or the key's) own namespace.
* **Authorisation.** Every call is a SubjectAccessReview for the caller: the Kubernetes verb the call
  amounts to on ``finetunejobs`` (files are a job's data) or ``modelservings`` (inference) in the
  project's namespace. The API's own ServiceAccount can do more; it never acts for a caller who may not.
  Every lookup is inside the project's namespace, so an object of another namespace is a 404.
* **Jobs** are FineTuneJobs (:func:`~hone_operator.openai_api.requests.finetunejob`); the operator runs
  them. Pause, resume and cancel patch ``spec.suspend`` / ``spec.cancel``. Events are the Kubernetes
  Events the operator posts for the job, and its latest progress report as a ``metrics`` event.
* **Files.** The record of an upload is a ConfigMap in the namespace, labelled ``api.hone.dev/file``
  (``kubectl get cm -l api.hone.dev/file`` lists them; RBAC and GitOps see them as any object), and
  its bytes are in the object store of the settings' ``api_store``, under
  ``<api_store>/files/<namespace>/``. A ConfigMap rather than a new kind: nothing more to install or
  upgrade, and a record is small. The content is written before the record and deleted after it, so a
  listed file always has its bytes.
* **Models.** The catalog's base models and the namespace's succeeded fine-tunes. A job made here gets a
  ModelServing of the same name (``api_serve_fine_tunes``, or the namespace's ConfigMap
  ``hone-api-settings``, key ``serveFineTunes``), owned by the job, which serves the
  fine-tune once it succeeds; inference goes to the Ready ModelServing of the namespace that serves the
  requested name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field

from starlette.responses import Response, StreamingResponse

from hone_operator.api.v1alpha1 import SAFETY_OVERRIDE_ANNOTATION, FineTuneJob
from hone_operator.builders.storage import uploaded_file_uri
from hone_operator.kube import Conflict, Kube, NotFound
from hone_operator.openai_api import objects
from hone_operator.openai_api.backend import Caller
from hone_operator.openai_api.errors import ApiError, bad_request, not_found
from hone_operator.openai_api.local import PROJECT, check_purpose, now
from hone_operator.openai_api.requests import JobCreate, finetunejob
from hone_operator.settings import OperatorSettings

log = logging.getLogger("hone.api")

API_VERSION = "hone.dev/v1alpha1"
#: Label of the ConfigMaps that record uploaded files (value "true"), and of their purpose.
FILE_LABEL = objects.ANNOTATION_PREFIX + "file"
PURPOSE_LABEL = objects.ANNOTATION_PREFIX + "purpose"
RECORD_KEY = "file.json"
#: A namespace's own choices for the API (key serveFineTunes: "true" or "false").
NAMESPACE_SETTINGS = "hone-api-settings"
T = TypeVar("T")
#: How long a TokenReview's answer is reused for the same token.
REVIEW_SECONDS = 10.0


class KeyIdentity(BaseModel):
    """One API key of the identities file: the key's SHA-256 and who it stands for in RBAC."""

    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the key; the key itself is not kept")
    user: str = Field(min_length=1, description="The user name RBAC sees (RoleBindings name it as kind: User).")
    groups: list[str] = Field(default_factory=list, description="Groups RBAC sees (kind: Group).")
    namespace: str | None = Field(None, description="The project when a request names none.")


class KeyIdentities:
    """API keys that stand for identities, from a YAML list of :class:`KeyIdentity` (a mounted Secret's file),
    read again when the file changes (a Secret's update reaches the pod without a restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._by_hash: dict[str, KeyIdentity] = {}
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        stat = self.path.stat()
        mark = (stat.st_mtime_ns, stat.st_size)
        if mark == self._seen:
            return
        raw = yaml.safe_load(self.path.read_text()) or []
        if not isinstance(raw, list):
            raise ValueError(f"{self.path}: a list of {{sha256, user, groups, namespace}} entries")
        entries = [KeyIdentity.model_validate(item) for item in raw]
        self._by_hash, self._seen = {e.sha256: e for e in entries}, mark

    def find(self, key: str) -> KeyIdentity | None:
        with self._lock:
            try:
                self._load()
            except (OSError, ValueError) as exc:  # keep the last good list; say why the new one is refused
                log.error("API key identities %s not reloaded: %s", self.path, exc)
        return self._by_hash.get(hashlib.sha256(key.encode()).hexdigest())


def _transient(exc: Exception) -> bool:
    """A failure of the call, not an answer to it: a connection the API server closed as the request went out
    (a pooled keep-alive connection), or an overloaded or restarting API server (429, 5xx)."""
    import urllib3

    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError)):
        return True
    status = getattr(exc, "status", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


def _again(call: Callable[[], T], attempts: int = 3) -> T:
    """``call``, made again after a transient failure; only for calls that change nothing (reviews, reads)."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - re-raised unless transient
            if attempt == attempts - 1 or not _transient(exc):
                raise
            log.warning("API server call failed (%s); trying again", exc)
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


class ClusterBackend:
    def __init__(self, kube: Kube, settings: OperatorSettings, store_credentials_dir: str | None = None,
                 key_identities: KeyIdentities | None = None) -> None:
        if not settings.api_store:
            raise ValueError("hone api in a cluster needs the setting api_store (s3://bucket/prefix): where uploaded "
                             "files and the models of its jobs are kept")
        self.kube, self.settings = kube, settings
        self.store = settings.api_store.rstrip("/")
        self.credentials_dir = store_credentials_dir
        self.keys = key_identities
        self._reviews: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    # ---- identity and RBAC ------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Caller:
        auth = authorization or ""
        token = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if not token:
            raise ApiError(401, "You didn't provide an API key: send a Kubernetes bearer token (a ServiceAccount "
                                "token from `kubectl create token`, or a token of the cluster's identity provider), "
                                "or an API key of hone api's key identities, as the API key.", code="invalid_api_key")
        if self.keys is not None and (identity := self.keys.find(token)) is not None:
            return Caller(identity.user, tuple(identity.groups), project=identity.namespace)
        key = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            cached = self._reviews.get(key)
        if cached is not None and time.monotonic() - cached[0] < REVIEW_SECONDS:
            return cached[1]
        review = _again(lambda: self.kube.create({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                                  "metadata": {}, "spec": {"token": token}}))
        status = (review or {}).get("status") or {}
        if not status.get("authenticated"):
            raise ApiError(401, f"Incorrect API key provided: the cluster refused the token "
                                f"({status.get('error') or 'not authenticated'}).", code="invalid_api_key")
        user = status.get("user") or {}
        name = user.get("username", "")
        parts = name.split(":")
        own = parts[2] if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"] else None
        caller = Caller(name, tuple(user.get("groups") or ()), user.get("uid", ""),
                        {k: list(v) for k, v in (user.get("extra") or {}).items()}, own)
        with self._lock:
            if len(self._reviews) > 4096:
                self._reviews.clear()
            self._reviews[key] = (time.monotonic(), caller)
        return caller

    def authorize(self, caller: Caller, project: str, verb: str, resource: str) -> None:
        if not PROJECT.match(project):
            raise bad_request(f"OpenAI-Project {project!r}: the project is the namespace to work in, a lowercase "
                              "name of letters, digits and '-' (at most 63)", "OpenAI-Project")
        spec: dict[str, Any] = {"user": caller.name, "groups": list(caller.groups),
                                "resourceAttributes": {"namespace": project, "verb": verb, "group": "hone.dev",
                                                       "resource": resource}}
        if caller.uid:
            spec["uid"] = caller.uid
        if caller.extra:
            spec["extra"] = caller.extra
        review = _again(lambda: self.kube.create({"apiVersion": "authorization.k8s.io/v1",
                                                  "kind": "SubjectAccessReview", "metadata": {}, "spec": spec}))
        if not ((review or {}).get("status") or {}).get("allowed"):
            raise ApiError(403, f"{caller.name} may not {verb} {resource}.hone.dev in namespace {project!r} "
                                f"(Kubernetes RBAC): ask for a Role there that grants it, or name your own "
                                f"namespace as the project.", code="permission_denied")

    # ---- files ------------------------------------------------------------------------------

    def _get(self, *args: Any) -> dict[str, Any] | None:
        return _again(lambda: self.kube.get(*args))

    def _list(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return _again(lambda: self.kube.list(*args, **kwargs))

    def _create(self, project: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj`` in the project's namespace; a namespace that does not exist is the project's 404."""
        try:
            return self.kube.create(obj)
        except NotFound:
            raise ApiError(404, f"Project {project!r} does not exist: there is no namespace of that name in the "
                                "cluster. Name an existing namespace as the project (OpenAI-Project).",
                           param="OpenAI-Project", code="project_not_found") from None

    def _fs(self) -> tuple[Any, str]:
        from hone_trainer.storage import filesystem

        return filesystem(self.store, self.credentials_dir)

    def _content_uri(self, project: str, file_id: str) -> str:
        return uploaded_file_uri(self.store, project, file_id)

    def _path(self, uri: str) -> str:
        return uri.removeprefix("s3://")

    def create_file(self, project: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        file_id = objects.new_id("file")
        uri = self._content_uri(project, file_id)
        fs, _ = self._fs()
        fs.pipe_file(self._path(uri), content)  # first the bytes: a listed record always has them
        record = {"id": file_id, "bytes": len(content), "created_at": now(), "filename": filename,
                  "purpose": purpose, "uri": uri}
        try:
            self._create(project, {"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": file_id, "namespace": project,
                                           "labels": {FILE_LABEL: "true", PURPOSE_LABEL: purpose,
                                                      objects.CREATED_BY: "hone-api"}},
                              "data": {RECORD_KEY: json.dumps(record)}})
        except Exception:
            fs.rm_file(self._path(uri))
            raise
        return record

    @staticmethod
    def _record(cm: dict[str, Any]) -> dict[str, Any] | None:
        try:
            record = json.loads((cm.get("data") or {}).get(RECORD_KEY, ""))
        except ValueError:
            return None
        return record if isinstance(record, dict) and record.get("id") == cm["metadata"]["name"] else None

    # A succeeded job's results file (OpenAI's step_metrics.csv) is not stored: it is the loss curves of the
    # job's status, under an id derived from the job's uid, so every replica answers the same without a write.

    @staticmethod
    def _results_id(ftj: FineTuneJob) -> str:
        return "file-" + hashlib.sha256(f"results:{ftj.metadata.uid}".encode()).hexdigest()[:24]

    @staticmethod
    def _results_csv(ftj: FineTuneJob) -> str:
        progress = ftj.status.progress
        train = [p.to_json_dict() for p in progress.train_curve] if progress else []
        valid = [p.to_json_dict() for p in progress.validation_curve] if progress else []
        return objects.results_csv(train, valid)

    def _results(self, project: str) -> dict[str, tuple[FineTuneJob, dict[str, Any]]]:
        out = {}
        for job in self._jobs(project):
            if objects.phase(job) == "Succeeded":
                record = {"id": self._results_id(job), "bytes": len(self._results_csv(job).encode()),
                          "created_at": objects.unix(job.status.completionTime) or 0,
                          "filename": "step_metrics.csv", "purpose": "fine-tune-results"}
                out[record["id"]] = (job, record)
        return out

    def _view(self, ftj: FineTuneJob) -> FineTuneJob:
        """The job as the API shows it: a succeeded one names its results file."""
        if objects.phase(ftj) == "Succeeded" and objects.RESULT_FILES not in objects.annotations(ftj):
            ftj.metadata.annotations = {**objects.annotations(ftj),
                                        objects.RESULT_FILES: json.dumps([self._results_id(ftj)])}
        return ftj

    def list_files(self, project: str) -> list[dict[str, Any]]:
        out = [record for _, record in self._results(project).values()]
        for cm in self._list("v1", "ConfigMap", project, label_selector=f"{FILE_LABEL}=true"):
            if (record := self._record(cm)) is not None:
                out.append(record)
        return out

    def get_file(self, project: str, file_id: str, param: str | None = None) -> dict[str, Any]:
        if not objects.FILE_ID.match(file_id):
            raise not_found("file", file_id, param)
        cm = self._get("v1", "ConfigMap", project, file_id)
        record = self._record(cm) if cm is not None and (cm["metadata"].get("labels") or {}).get(FILE_LABEL) == "true" \
            else None
        if record is None and (found := self._results(project).get(file_id)) is not None:
            record = found[1]
        if record is None:
            raise not_found("file", file_id, param)
        return record

    def file_response(self, project: str, file_id: str) -> Any:
        record = self.get_file(project, file_id)
        if record["purpose"] == "fine-tune-results" and "uri" not in record:
            job, _ = self._results(project)[file_id]
            return Response(self._results_csv(job), media_type="application/octet-stream")
        fs, _ = self._fs()
        fp = fs.open(self._path(record["uri"]), "rb")

        def chunks() -> Iterator[bytes]:
            with fp:
                while piece := fp.read(1 << 20):
                    yield piece

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    def delete_file(self, project: str, file_id: str) -> None:
        record = self.get_file(project, file_id)
        if "uri" not in record:
            raise bad_request(f"{file_id} is the results file of a fine-tuning job; it goes when the job is deleted",
                              "file_id")
        objects.check_in_use(self._jobs(project), file_id)
        self.kube.delete("v1", "ConfigMap", project, file_id)  # gone from listings first, then the bytes
        fs, _ = self._fs()
        try:
            fs.rm_file(self._path(record["uri"]))
        except FileNotFoundError:
            pass

    # ---- jobs -------------------------------------------------------------------------------

    def _secret(self) -> dict[str, str]:
        return {"name": self.settings.api_store_secret}

    def create_job(self, project: str, req: JobCreate) -> FineTuneJob:
        data = {}
        for param, file_id in (("training_file", req.training_file), ("validation_file", req.validation_file)):
            if file_id is not None:
                record = self.get_file(project, file_id, param)
                check_purpose(record, param)
                data[param] = {"uri": record["uri"], "credentialsSecret": self._secret()}
        job_id = objects.new_id("ftjob")
        doc = finetunejob(req, self.settings.catalog, project, job_id, data,
                          {"uri": f"{self.store}/models", "credentialsSecret": self._secret()})
        doc["spec"]["checkpointing"] = {"keep": 3, "everyEpoch": True}  # OpenAI's: each epoch's, the last three
        FineTuneJob.model_validate(doc)  # what the CRD's schema will check, said as OpenAI would
        created = self._create(project, doc)
        if self._serves_fine_tunes(project):
            meta = created["metadata"]
            try:
                self._serving(project, job_id, meta["uid"], doc["spec"].get("method") != "full")
            except Exception:  # the request fails as a whole: no job left that nothing will serve
                self.kube.delete(API_VERSION, "FineTuneJob", project, job_id)
                raise
        return FineTuneJob.model_validate(created)

    def _serves_fine_tunes(self, project: str) -> bool:
        """The namespace's choice (ConfigMap ``hone-api-settings``, key ``serveFineTunes``), else the settings'."""
        cm = self._get("v1", "ConfigMap", project, NAMESPACE_SETTINGS)
        value = ((cm or {}).get("data") or {}).get("serveFineTunes")
        if value is None:
            return self.settings.api_serve_fine_tunes
        if value.strip().lower() not in ("true", "false"):
            raise ApiError(500, f"ConfigMap {NAMESPACE_SETTINGS} in namespace {project!r}: serveFineTunes is "
                                f"{value!r}; it must be true or false", type="server_error", code="invalid_settings")
        return value.strip().lower() == "true"

    def _serving(self, project: str, job_id: str, uid: str, adapters: bool) -> None:
        """The job's ModelServing: owned by it (deleted with it), Waiting until it succeeds, then serving it
        and, for an adapter (``adapters``), its checkpoints by their ``…:ckpt-step-N`` names, as OpenAI does."""
        self.kube.create({
            "apiVersion": API_VERSION, "kind": "ModelServing",
            "metadata": {"name": job_id, "namespace": project, "labels": {objects.CREATED_BY: "hone-api"},
                         "ownerReferences": [{"apiVersion": API_VERSION, "kind": "FineTuneJob", "name": job_id,
                                              "uid": uid, "blockOwnerDeletion": False}]},
            "spec": {"fineTuneJobRef": {"name": job_id}, **({"serveCheckpoints": True} if adapters else {})},
        })

    def _jobs(self, project: str) -> list[FineTuneJob]:
        out = []
        for body in self._list(API_VERSION, "FineTuneJob", project):
            try:
                out.append(FineTuneJob.model_validate(body))
            except ValueError:
                log.warning("FineTuneJob %s/%s does not parse; left out", project, body["metadata"].get("name"))
        return out

    def list_jobs(self, project: str) -> list[FineTuneJob]:
        """Every FineTuneJob of the namespace, the API's and those applied as YAML alike, newest first."""
        return sorted((self._view(j) for j in self._jobs(project)), key=lambda j: (str(j.metadata.creationTimestamp), j.metadata.name),
                      reverse=True)

    def get_job(self, project: str, job_id: str) -> FineTuneJob:
        if not PROJECT.match(job_id):  # a Kubernetes name (API jobs are ftjob-…; YAML jobs keep theirs)
            raise not_found("job", job_id)
        body = self._get(API_VERSION, "FineTuneJob", project, job_id)
        if body is None:
            raise not_found("job", job_id)
        return self._view(FineTuneJob.model_validate(body))

    def control(self, project: str, job_id: str, action: str, attempt: int = 0) -> FineTuneJob:
        ftj = self.get_job(project, job_id)
        objects.check_control(ftj, action)
        change = {"cancel": True} if action == "cancel" else {"suspend": action == "pause"}
        # The resourceVersion makes it a compare-and-swap: a job that finished meanwhile is not changed
        # (the operator wrote its status since): read it again and decide again.
        try:
            body = self.kube.patch(API_VERSION, "FineTuneJob", project, job_id,
                                   {"metadata": {"resourceVersion": ftj.metadata.resourceVersion}, "spec": change})
        except Conflict:
            if attempt >= 5:
                raise
            return self.control(project, job_id, action, attempt + 1)
        return FineTuneJob.model_validate(body)

    def events(self, project: str, job_id: str) -> list[dict[str, Any]]:
        ftj = self.get_job(project, job_id)
        uid = ftj.metadata.uid or ""
        out = []
        for ev in self._list("v1", "Event", project, field_selector=f"involvedObject.uid={uid}"):
            when = ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("firstTimestamp") \
                or ev["metadata"].get("creationTimestamp")
            level = "warn" if ev.get("type") == "Warning" else "info"
            if ev.get("reason") == "Failed":
                level = "error"
            out.append({"id": f"ftevent-{ev['metadata'].get('uid') or ev['metadata']['name']}",
                        "created_at": objects.unix(when) or 0, "level": level,
                        "message": ev.get("message") or ev.get("reason") or "", "type": "message", "data": None})
        out += _metrics_events(ftj)
        return sorted(out, key=lambda e: (e["created_at"], e["id"]), reverse=True)

    def checkpoints(self, project: str, job_id: str) -> list[dict[str, Any]]:
        """The complete checkpoints the job's status lists (the trainer reports each as it completes),
        newest first; ``created_at`` is when the job completed (or, before, its latest report)."""
        ftj = self.get_job(project, job_id)
        progress = ftj.status.progress
        done = objects.unix(ftj.status.completionTime) or objects.unix(progress.updated_at if progress else None) or 0
        items = sorted(ftj.status.checkpoints or [], key=lambda c: c.step, reverse=True)
        return [objects.checkpoint_object(ftj, c.step, done, c.model_dump(include={
            "train_loss", "validation_loss", "validation_accuracy"})) for c in items]

    # ---- models -----------------------------------------------------------------------------

    def fine_tunes(self, project: str) -> list[FineTuneJob]:
        return [j for j in self._jobs(project) if objects.is_fine_tune(j)]

    def delete_model(self, project: str, job: FineTuneJob) -> None:
        self.kube.patch(API_VERSION, "FineTuneJob", project, job.metadata.name,
                        {"metadata": {"annotations": {objects.MODEL_DELETED: "true"}}})
        msv = self._get(API_VERSION, "ModelServing", project, job.metadata.name)
        if msv is not None and (msv["metadata"].get("labels") or {}).get(objects.CREATED_BY) == "hone-api":
            self.kube.delete(API_VERSION, "ModelServing", project, job.metadata.name)
        assert job.status.fineTunedModel is not None
        artifact = (job.status.fineTunedModel.artifactUri or "").rstrip("/")
        if artifact.startswith(f"{self.store}/models/{project}/"):  # only what the API's own jobs published
            fs, _ = self._fs()
            try:
                fs.rm(self._path(artifact), recursive=True)
            except FileNotFoundError:
                pass

    def safety_override(self, project: str, job: FineTuneJob) -> tuple[bool, str]:
        return (objects.annotations(job).get(SAFETY_OVERRIDE_ANNOTATION) == "true",
                f"annotate its FineTuneJob (kubectl -n {project} annotate finetunejob {job.metadata.name} "
                f"{SAFETY_OVERRIDE_ANNOTATION}=true)")

    def inference_url(self, project: str, name: str, job: FineTuneJob | None) -> str:
        waiting = []
        for msv in self._list(API_VERSION, "ModelServing", project):
            status = msv.get("status") or {}
            if name not in (status.get("servedModels") or []) and not (
                    job is not None and (msv.get("spec") or {}).get("fineTuneJobRef", {}).get("name")
                    == job.metadata.name):
                continue
            if status.get("phase") == "Ready" and status.get("url") and name in (status.get("servedModels") or []):
                return str(status["url"]).removesuffix("/").removesuffix("/v1")
            waiting.append(f"{msv['metadata']['name']} ({status.get('phase') or 'Pending'})")
        if waiting:
            raise ApiError(503, f"The model '{name}' is not ready yet: ModelServing {', '.join(waiting)} in namespace "
                                f"{project!r} is starting; try again shortly.", type="server_error",
                           code="model_not_ready")
        raise ApiError(404, f"The model '{name}' is not served in namespace {project!r}: no ModelServing serves it. "
                            "Create one (spec.fineTuneJobRef, or spec.baseModel for a base model).", param="model",
                       code="model_not_served")


def _metrics_events(ftj: FineTuneJob) -> list[dict[str, Any]]:
    """OpenAI's ``metrics`` events: one per step of the job's training-loss curve (``status.progress`` keeps at
    most 100 points, evenly spaced over the run; a short job's every step) with the validation loss where it
    was measured, and one for the latest report. A curve point's time is estimated from the job's start and
    the latest report in proportion to its step (the status keeps no time per step)."""
    progress = ftj.status.progress
    if progress is None or not progress.step or not progress.total_steps:
        return []
    uid = ftj.metadata.uid or ""
    valid = {p.step: p.loss for p in progress.validation_curve}
    losses: dict[int, float | None] = {p.step: p.loss for p in progress.train_curve if 0 < p.step <= progress.step}
    losses.setdefault(progress.step, progress.train_loss)
    end = objects.unix(progress.updated_at) or 0
    start = objects.unix(ftj.status.startTime) or end
    out = []
    for step, loss in sorted(losses.items()):
        latest = step == progress.step
        said = f", training loss={loss:.4f}" if loss is not None else ""
        out.append({"id": f"ftevent-{uid}-step-{step}", "created_at": start + (end - start) * step // progress.step,
                    "level": "info", "message": f"Step {step}/{progress.total_steps}{said}", "type": "metrics",
                    "data": {"step": step, "total_steps": progress.total_steps, "train_loss": loss,
                             "valid_loss": valid.get(step, progress.validation_loss if latest else None),
                             "trained_tokens": progress.trained_tokens if latest else None}})
    return out
