"""The HTTP routes of ``hone api``: OpenAI's fine-tuning, files and models API, and inference by model name.

Every route authenticates the caller, takes the project from the
``OpenAI-Project`` header (the client's ``project=``; else the caller's own
namespace, else ``default``), checks that the caller may do what the route
does there, and answers errors as OpenAI's error object. Handlers run the
backend's blocking work (:mod:`.backend`) in the thread pool.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hone_operator.api.v1alpha1 import FineTuneJob
from hone_operator.openai_api import objects
from hone_operator.openai_api.backend import Backend
from hone_operator.openai_api.errors import ApiError, bad_request
from hone_operator.openai_api.files import check_upload
from hone_operator.openai_api.local import DEFAULT_PROJECT, MAX_FILE_BYTES
from hone_operator.openai_api.requests import JobCreate, parse
from hone_operator.openai_api.serving import forward

log = logging.getLogger("hone.api")

METADATA_QUERY = re.compile(r"^metadata\[(.+)\]$")
Handler = Callable[[Request], Awaitable[Response]]


class Api:
    def __init__(self, backend: Backend, max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.backend = backend
        self.max_file_bytes = max_file_bytes
        self.started = int(time.time())  # the ``created`` of the catalog's models

    # ---- plumbing ---------------------------------------------------------------------------

    def guard(self, verb: str, resource: str, handler: Callable[[Request, str], Awaitable[Any]]) -> Handler:
        """``handler`` for a caller who may ``verb`` ``resource`` in the request's project."""
        async def endpoint(request: Request) -> Response:
            try:
                caller = await run_in_threadpool(self.backend.authenticate, request.headers.get("authorization"))
                project = request.headers.get("openai-project") or caller.project or DEFAULT_PROJECT
                await run_in_threadpool(self.backend.authorize, caller, project, verb, resource)
                out = await handler(request, project)
            except ApiError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)
            except Exception:  # noqa: BLE001 - a 500 in OpenAI's shape, the details in the log
                log.exception("%s %s failed", request.method, request.url.path)
                return JSONResponse(ApiError(500, "The server had an error while processing your request.",
                                             type="server_error").body(), status_code=500)
            return out if isinstance(out, Response) else JSONResponse(out)
        return endpoint

    def organization(self, project: str) -> str:
        return f"org-{project}"

    # ---- files ------------------------------------------------------------------------------

    async def create_file(self, request: Request, project: str) -> Any:
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as exc:  # noqa: BLE001 - a body that is not multipart/form-data
            raise bad_request(f"send the file as multipart/form-data with fields file and purpose ({exc})") from None
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        if not isinstance(purpose, str) or not purpose:
            raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose",
                           code="missing_required_parameter")
        content = await upload.read(self.max_file_bytes + 1)
        filename = Path(upload.filename or "upload.jsonl").name
        await run_in_threadpool(check_upload, filename, purpose, content, self.max_file_bytes)
        record = await run_in_threadpool(self.backend.create_file, project, filename, purpose, content)
        return objects.file_object(record)

    async def list_files(self, request: Request, project: str) -> Any:
        q = request.query_params
        records = await run_in_threadpool(self.backend.list_files, project)
        if q.get("purpose"):
            records = [r for r in records if r["purpose"] == q["purpose"]]
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request("order must be asc or desc", "order")
        records.sort(key=lambda r: (r["created_at"], r["id"]), reverse=order == "desc")
        return objects.page([objects.file_object(r) for r in records], q.get("after"), _limit(q, 10000, 10000))

    async def get_file(self, request: Request, project: str) -> Any:
        return objects.file_object(await run_in_threadpool(self.backend.get_file, project, request.path_params["id"]))

    async def file_content(self, request: Request, project: str) -> Any:
        return await run_in_threadpool(self.backend.file_response, project, request.path_params["id"])

    async def delete_file(self, request: Request, project: str) -> Any:
        file_id = request.path_params["id"]
        await run_in_threadpool(self.backend.delete_file, project, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # ---- jobs -------------------------------------------------------------------------------

    async def create_job(self, request: Request, project: str) -> Any:
        req = parse(JobCreate, await _json(request))
        ftj = await run_in_threadpool(self.backend.create_job, project, req)
        return objects.job_object(ftj, self.organization(project))

    async def list_jobs(self, request: Request, project: str) -> Any:
        q = request.query_params
        wanted = {m.group(1): v for k, v in q.multi_items() if (m := METADATA_QUERY.match(k))}
        jobs = await run_in_threadpool(self.backend.list_jobs, project)
        out = [objects.job_object(j, self.organization(project)) for j in jobs]
        if wanted:
            out = [j for j in out if all((j["metadata"] or {}).get(k) == v for k, v in wanted.items())]
        return objects.page(out, q.get("after"), _limit(q, 20, 100))

    async def get_job(self, request: Request, project: str) -> Any:
        ftj = await run_in_threadpool(self.backend.get_job, project, request.path_params["id"])
        return objects.job_object(ftj, self.organization(project))

    def control(self, action: str) -> Callable[[Request, str], Awaitable[Any]]:
        async def handler(request: Request, project: str) -> Any:
            ftj = await run_in_threadpool(self.backend.control, project, request.path_params["id"], action)
            return objects.job_object(ftj, self.organization(project))
        return handler

    async def events(self, request: Request, project: str) -> Any:
        q = request.query_params
        events = await run_in_threadpool(self.backend.events, project, request.path_params["id"])
        return objects.page([objects.event_object(e) for e in events], q.get("after"), _limit(q, 20, 100))

    async def checkpoints(self, request: Request, project: str) -> Any:
        q = request.query_params
        items = await run_in_threadpool(self.backend.checkpoints, project, request.path_params["id"])
        return objects.page(items, q.get("after"), _limit(q, 10, 100))

    # ---- models -----------------------------------------------------------------------------

    @staticmethod
    def _named(tunes: list[FineTuneJob], name: str) -> FineTuneJob | None:
        """The job of ``tunes`` (from the backend's ``fine_tunes``) whose fine-tuned model is ``name``."""
        return next((j for j in tunes if j.status.fineTunedModel and j.status.fineTunedModel.name == name), None)

    def _models(self, project: str) -> list[dict[str, Any]]:
        catalog = self.backend.settings.catalog
        out = [objects.model_object(name, self.started, "hone") for name in sorted(catalog)]
        for job in self.backend.fine_tunes(project):
            assert job.status.fineTunedModel is not None
            out.append(objects.model_object(job.status.fineTunedModel.name, objects.unix(job.status.completionTime)
                                            or 0, self.organization(project)))
        return out

    def _model_not_found(self, name: str, project: str) -> ApiError:
        available = ", ".join(m["id"] for m in self._models(project))
        return ApiError(404, f"The model '{name}' does not exist or you do not have access to it. Available: "
                             f"{available}.", param="model", code="model_not_found")

    async def list_models(self, request: Request, project: str) -> Any:
        return {"object": "list", "data": await run_in_threadpool(self._models, project)}

    async def get_model(self, request: Request, project: str) -> Any:
        name = request.path_params["model"]
        models = await run_in_threadpool(self._models, project)
        for m in models:
            if m["id"] == name:
                return m
        raise self._model_not_found(name, project)

    async def delete_model(self, request: Request, project: str) -> Any:
        name = request.path_params["model"]
        return await run_in_threadpool(self._delete_model, project, name)

    def _delete_model(self, project: str, name: str) -> dict[str, Any]:
        if name in self.backend.settings.catalog:
            raise ApiError(403, f"'{name}' is a base model of the catalog; only fine-tuned models can be deleted",
                           param="model", code="model_not_deletable")
        job = self._named(self.backend.fine_tunes(project), name)
        if job is None:
            raise self._model_not_found(name, project)
        self.backend.delete_model(project, job)
        return {"id": name, "object": "model", "deleted": True}

    # ---- inference --------------------------------------------------------------------------

    def _url(self, project: str, name: str) -> str:
        job = None
        if name not in self.backend.settings.catalog:
            checkpoint = objects.checkpoint_of(name)
            job = self._named(self.backend.fine_tunes(project), checkpoint[0] if checkpoint else name)
            if job is None or (checkpoint and not any(
                    c["fine_tuned_model_checkpoint"] == name
                    for c in self.backend.checkpoints(project, job.metadata.name))):
                raise self._model_not_found(name, project)
            why = objects.failed_safety_check(job)
            if why is not None:
                overridden, how = self.backend.safety_override(project, job)
                if not overridden:  # a ModelServing's SafetyCheckFailed, in OpenAI's words
                    raise ApiError(403, f"{why}; it is not served. Fine-tune again with safer data, or {how} to "
                                        "serve it anyway.", param="model", code="model_failed_safety_check")
        return self.backend.inference_url(project, name, job)

    def inference(self, path: str) -> Callable[[Request, str], Awaitable[Any]]:
        async def handler(request: Request, project: str) -> Any:
            body = await request.body()
            payload = _loads(body)
            name = payload.get("model")
            if not isinstance(name, str) or not name:
                raise ApiError(400, "Missing required parameter: 'model'.", param="model",
                               code="missing_required_parameter")
            url = await run_in_threadpool(self._url, project, name)
            status, headers, chunks = await run_in_threadpool(forward, url, path, body,
                                                              request.headers.get("content-type",
                                                                                  "application/json"))
            return StreamingResponse(chunks, status_code=status, headers=headers)
        return handler


def _limit(q: Any, default: int, most: int) -> int:
    raw = q.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise bad_request(f"limit must be a whole number from 1 to {most}", "limit")
    return value


def _loads(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"null")
    except ValueError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request("the request body must be a JSON object")
    return value


async def _json(request: Request) -> dict[str, Any]:
    return _loads(await request.body())


def create_app(api: Api) -> Starlette:
    jobs = "/v1/fine_tuning/jobs"

    def g(verb: str, resource: str, handler: Callable[[Request, str], Awaitable[Any]]) -> Handler:
        return api.guard(verb, resource, handler)

    # Each call is authorised as the Kubernetes verb it amounts to on FineTuneJobs (files are a job's data)
    # or ModelServings (inference), in the project's namespace.
    ftj, msv = "finetunejobs", "modelservings"
    routes = [
        Route("/health", lambda request: JSONResponse({"status": "ok"})),
        Route("/v1/files", g("create", ftj, api.create_file), methods=["POST"]),
        Route("/v1/files", g("list", ftj, api.list_files), methods=["GET"]),
        Route("/v1/files/{id}", g("get", ftj, api.get_file), methods=["GET"]),
        Route("/v1/files/{id}", g("delete", ftj, api.delete_file), methods=["DELETE"]),
        Route("/v1/files/{id}/content", g("get", ftj, api.file_content), methods=["GET"]),
        Route(jobs, g("create", ftj, api.create_job), methods=["POST"]),
        Route(jobs, g("list", ftj, api.list_jobs), methods=["GET"]),
        Route(jobs + "/{id}", g("get", ftj, api.get_job), methods=["GET"]),
        Route(jobs + "/{id}/cancel", g("patch", ftj, api.control("cancel")), methods=["POST"]),
        Route(jobs + "/{id}/pause", g("patch", ftj, api.control("pause")), methods=["POST"]),
        Route(jobs + "/{id}/resume", g("patch", ftj, api.control("resume")), methods=["POST"]),
        Route(jobs + "/{id}/events", g("get", ftj, api.events), methods=["GET"]),
        Route(jobs + "/{id}/checkpoints", g("get", ftj, api.checkpoints), methods=["GET"]),
        Route("/v1/models", g("list", ftj, api.list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", g("get", ftj, api.get_model), methods=["GET"]),
        Route("/v1/models/{model:path}", g("delete", ftj, api.delete_model), methods=["DELETE"]),
        Route("/v1/chat/completions", g("get", msv, api.inference("/v1/chat/completions")), methods=["POST"]),
        Route("/v1/completions", g("get", msv, api.inference("/v1/completions")), methods=["POST"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            error = ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        else:
            error = ApiError(exc.status_code, f"Unknown request URL: {request.method} {request.url.path}. Please "
                                              "check the URL for typos.", code="unknown_url")
        return JSONResponse(error.body(), status_code=exc.status_code)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
