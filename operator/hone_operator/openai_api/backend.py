"""What the HTTP routes of ``hone api`` need from where its state lives: one machine or a cluster.

:class:`~hone_operator.openai_api.local.LocalBackend` keeps it in a folder and runs jobs here;
:class:`~hone_operator.openai_api.cluster.ClusterBackend` keeps it in Kubernetes (FineTuneJobs,
ConfigMaps, Events) and an object store, and checks every call against the caller's RBAC. The
routes (:mod:`.app`) map both to OpenAI's objects the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.responses import Response

from hone_operator.api.v1alpha1 import FineTuneJob
from hone_operator.openai_api.requests import JobCreate
from hone_operator.settings import OperatorSettings


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the identity its credentials prove, and the project it works in by default."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, list[str]] = field(default_factory=dict)
    project: str | None = None


class Backend(Protocol):
    settings: OperatorSettings

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller behind an ``Authorization`` header; OpenAI's 401 when it proves nobody."""

    def authorize(self, caller: Caller, project: str, verb: str, resource: str) -> None:
        """Nothing when ``caller`` may ``verb`` ``resource`` (finetunejobs, modelservings) in ``project``;
        OpenAI's 403 naming what is missing otherwise (and a 400 for a project name that cannot be one)."""

    # files: records are dicts with id, bytes, created_at, filename, purpose
    def create_file(self, project: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]: ...
    def list_files(self, project: str) -> list[dict[str, Any]]: ...
    def get_file(self, project: str, file_id: str) -> dict[str, Any]: ...
    def file_response(self, project: str, file_id: str) -> Response: ...
    def delete_file(self, project: str, file_id: str) -> None: ...

    # jobs
    def create_job(self, project: str, req: JobCreate) -> FineTuneJob: ...
    def list_jobs(self, project: str) -> list[FineTuneJob]:
        """The project's API-made jobs, newest first."""
    def get_job(self, project: str, job_id: str) -> FineTuneJob: ...
    def control(self, project: str, job_id: str, action: str) -> FineTuneJob:
        """``cancel``, ``pause`` or ``resume`` (``spec.cancel`` / ``spec.suspend``)."""
    def events(self, project: str, job_id: str) -> list[dict[str, Any]]:
        """The job's events (id, created_at, level, message, type, data), newest first."""
    def checkpoints(self, project: str, job_id: str) -> list[dict[str, Any]]:
        """OpenAI's checkpoint objects, newest first."""

    # models
    def fine_tunes(self, project: str) -> list[FineTuneJob]:
        """The project's succeeded jobs whose model was not deleted."""
    def delete_model(self, project: str, job: FineTuneJob) -> None: ...
    def safety_override(self, project: str, job: FineTuneJob) -> tuple[bool, str]:
        """Whether ``job``'s fine-tune is served although its safety check failed, and what would serve it (in
        a refusal's words)."""
    def inference_url(self, project: str, name: str, job: FineTuneJob | None) -> str:
        """``http://host:port`` of a server that answers for model ``name`` (a catalog base when ``job`` is
        None, else that job's fine-tune)."""
