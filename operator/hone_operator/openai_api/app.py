"""The HTTP routes of ``hone api``: OpenAI's fine-tuning, files and models API, and inference by model name.

Every route takes the project from the ``OpenAI-Project`` header (the
client's ``project=``; ``default`` without it), and every error is OpenAI's
error object. Handlers run the store's blocking work in the thread pool.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hone_operator import local
from hone_operator.api.v1alpha1 import FineTuneJob
from hone_operator.api.v1alpha1.finetunejob import BaseModelSpec
from hone_operator.openai_api import objects
from hone_operator.openai_api.errors import ApiError, bad_request
from hone_operator.openai_api.files import check_upload
from hone_operator.openai_api.local import DEFAULT_PROJECT, MAX_FILE_BYTES, LocalStore, Worker, control
from hone_operator.openai_api.requests import JobCreate, parse
from hone_operator.openai_api.serving import ServerPool, Target, forward

log = logging.getLogger("hone.api")

METADATA_QUERY = re.compile(r"^metadata\[(.+)\]$")
Handler = Callable[[Request], Awaitable[Response]]


class Api:
    def __init__(self, store: LocalStore, worker: Worker, pool: ServerPool, api_keys: set[str] | None,
                 max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.store, self.worker, self.pool = store, worker, pool
        self.api_keys = api_keys
        self.max_file_bytes = max_file_bytes
        self.started = int(time.time())  # the ``created`` of the catalog's models

    # ---- plumbing ---------------------------------------------------------------------------

    def guard(self, handler: Callable[[Request, str], Awaitable[Any]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                if self.api_keys is not None:
                    auth = request.headers.get("authorization", "")
                    if not auth.startswith("Bearer ") or auth[7:].strip() not in self.api_keys:
                        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
                project = request.headers.get("openai-project") or DEFAULT_PROJECT
                self.store.project_dir(project)  # checks the name
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
        record = await run_in_threadpool(self.store.create_file, project, filename, purpose, content)
        return objects.file_object(record)

    async def list_files(self, request: Request, project: str) -> Any:
        q = request.query_params
        records = await run_in_threadpool(self.store.list_files, project)
        if q.get("purpose"):
            records = [r for r in records if r["purpose"] == q["purpose"]]
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request("order must be asc or desc", "order")
        records.sort(key=lambda r: (r["created_at"], r["id"]), reverse=order == "desc")
        return objects.page([objects.file_object(r) for r in records], q.get("after"), _limit(q, 10000, 10000))

    async def get_file(self, request: Request, project: str) -> Any:
        return objects.file_object(await run_in_threadpool(self.store.get_file, project, request.path_params["id"]))

    async def file_content(self, request: Request, project: str) -> Any:
        path = await run_in_threadpool(self.store.file_content, project, request.path_params["id"])
        return FileResponse(path, media_type="application/octet-stream")

    async def delete_file(self, request: Request, project: str) -> Any:
        file_id = request.path_params["id"]
        await run_in_threadpool(self.store.delete_file, project, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # ---- jobs -------------------------------------------------------------------------------

    async def create_job(self, request: Request, project: str) -> Any:
        req = parse(JobCreate, await _json(request))
        ftj = await run_in_threadpool(self.store.create_job, project, req)
        return objects.job_object(ftj, self.organization(project))

    async def list_jobs(self, request: Request, project: str) -> Any:
        q = request.query_params
        wanted = {m.group(1): v for k, v in q.multi_items() if (m := METADATA_QUERY.match(k))}
        jobs = await run_in_threadpool(self.store.list_jobs, project)
        out = [objects.job_object(j, self.organization(project)) for j in jobs]
        if wanted:
            out = [j for j in out if all((j["metadata"] or {}).get(k) == v for k, v in wanted.items())]
        return objects.page(out, q.get("after"), _limit(q, 20, 100))

    async def get_job(self, request: Request, project: str) -> Any:
        ftj = await run_in_threadpool(self.store.get_job, project, request.path_params["id"])
        return objects.job_object(ftj, self.organization(project))

    def control(self, action: str) -> Callable[[Request, str], Awaitable[Any]]:
        async def handler(request: Request, project: str) -> Any:
            ftj = await run_in_threadpool(control, self.store, self.worker, project, request.path_params["id"],
                                          action)
            return objects.job_object(ftj, self.organization(project))
        return handler

    async def events(self, request: Request, project: str) -> Any:
        q = request.query_params
        events = await run_in_threadpool(self.store.events, project, request.path_params["id"])
        return objects.page([objects.event_object(e) for e in events], q.get("after"), _limit(q, 20, 100))

    async def checkpoints(self, request: Request, project: str) -> Any:
        q = request.query_params
        items = await run_in_threadpool(self.store.checkpoints, project, request.path_params["id"])
        return objects.page(items, q.get("after"), _limit(q, 10, 100))

    # ---- models -----------------------------------------------------------------------------

    def _fine_tunes(self, project: str) -> list[FineTuneJob]:
        return [j for j in self.store.list_jobs(project)
                if j.status.phase is not None and j.status.phase.value == "Succeeded" and j.status.fineTunedModel
                and objects.annotations(j).get(objects.MODEL_DELETED) != "true"]

    @staticmethod
    def _named(tunes: list[FineTuneJob], name: str) -> FineTuneJob | None:
        """The job of ``tunes`` (from :meth:`_fine_tunes`) whose fine-tuned model is ``name``."""
        return next((j for j in tunes if j.status.fineTunedModel.name == name), None)

    def _models(self, project: str) -> list[dict[str, Any]]:
        out = [objects.model_object(name, self.started, "hone") for name in sorted(self.store.settings.catalog)]
        for job in self._fine_tunes(project):
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
        if name in self.store.settings.catalog:
            raise ApiError(403, f"'{name}' is a base model of the catalog; only fine-tuned models can be deleted",
                           param="model", code="model_not_deletable")
        job = self._named(self._fine_tunes(project), name)
        if job is None:
            raise self._model_not_found(name, project)

        def mark(ftj: FineTuneJob) -> None:
            ftj.metadata.annotations = {**objects.annotations(ftj), objects.MODEL_DELETED: "true"}

        self.store.update_job(project, job.metadata.name, mark)
        self.pool.stop()  # a running server may hold it
        artifact = job.status.fineTunedModel.artifactUri
        if artifact and Path(artifact).is_dir() and self.store.output_root() in Path(artifact).resolve().parents:
            shutil.rmtree(artifact, ignore_errors=True)  # only ever under the API's own output folder
        return {"id": name, "object": "model", "deleted": True}

    # ---- inference --------------------------------------------------------------------------

    def _target(self, project: str, name: str) -> Target:
        catalog = self.store.settings.catalog
        tunes = self._fine_tunes(project)
        if name in catalog:
            base_name, base_uri = name, catalog[name].uri
        else:
            job = self._named(tunes, name)
            if job is None:
                raise self._model_not_found(name, project)
            base_uri = job.spec.baseModel.uri
            base_name = next((n for n, e in catalog.items() if e.uri == base_uri), base_uri)
        adapters = tuple(sorted((j.status.fineTunedModel.name, j.status.fineTunedModel.artifactUri or "")
                                for j in tunes if j.spec.baseModel.uri == base_uri))
        location = local.base_model_source(BaseModelSpec(uri=base_uri), self.store.root).location
        return Target(project, base_name, location, adapters)

    def inference(self, path: str) -> Callable[[Request, str], Awaitable[Any]]:
        async def handler(request: Request, project: str) -> Any:
            body = await request.body()
            payload = _loads(body)
            name = payload.get("model")
            if not isinstance(name, str) or not name:
                raise ApiError(400, "Missing required parameter: 'model'.", param="model",
                               code="missing_required_parameter")
            target = await run_in_threadpool(self._target, project, name)
            url = await run_in_threadpool(self.pool.url, target)
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
    g = api.guard
    jobs = "/v1/fine_tuning/jobs"
    routes = [
        Route("/health", lambda request: JSONResponse({"status": "ok"})),
        Route("/v1/files", g(api.create_file), methods=["POST"]),
        Route("/v1/files", g(api.list_files), methods=["GET"]),
        Route("/v1/files/{id}", g(api.get_file), methods=["GET"]),
        Route("/v1/files/{id}", g(api.delete_file), methods=["DELETE"]),
        Route("/v1/files/{id}/content", g(api.file_content), methods=["GET"]),
        Route(jobs, g(api.create_job), methods=["POST"]),
        Route(jobs, g(api.list_jobs), methods=["GET"]),
        Route(jobs + "/{id}", g(api.get_job), methods=["GET"]),
        Route(jobs + "/{id}/cancel", g(api.control("cancel")), methods=["POST"]),
        Route(jobs + "/{id}/pause", g(api.control("pause")), methods=["POST"]),
        Route(jobs + "/{id}/resume", g(api.control("resume")), methods=["POST"]),
        Route(jobs + "/{id}/events", g(api.events), methods=["GET"]),
        Route(jobs + "/{id}/checkpoints", g(api.checkpoints), methods=["GET"]),
        Route("/v1/models", g(api.list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", g(api.get_model), methods=["GET"]),
        Route("/v1/models/{model:path}", g(api.delete_model), methods=["DELETE"]),
        Route("/v1/chat/completions", g(api.inference("/v1/chat/completions")), methods=["POST"]),
        Route("/v1/completions", g(api.inference("/v1/completions")), methods=["POST"]),
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
