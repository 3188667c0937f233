"""``hone api --local``: the API's state in a folder, its jobs run by the local trainer, its models served on demand.

The folder stands in for the cluster: a FineTuneJob per job (the same object
the operator drives, as JSON), its events, and the uploaded files::

    <workdir>/projects/<project>/files/<file-id>/{record.json,content}
    <workdir>/projects/<project>/jobs/<job-id>/{finetunejob.json,events.jsonl,run/}
    <workdir>/output/<project>/<job-id>/{model,checkpoints}

A project (OpenAI's ``OpenAI-Project`` header) is a namespace: every path is
built from a project and an id that were checked against strict patterns
first, so none leaves its project's folder, and a job or file of another
project is simply not found.

One worker thread runs the jobs, oldest first, one at a time, through the
steps the operator takes in a cluster: ValidatingFiles (the same validator),
Queued, Running (the same trainer, as ``hone run`` starts it), then
Succeeded, Failed or Cancelled. Pausing stops the trainer at a checkpoint
(Suspended); resuming queues the job again and training continues from that
checkpoint. A job that was Running when ``hone api`` stopped resumes when it
starts again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from hone_trainer import contract
from hone_operator.api.v1alpha1 import FineTuneJob
from hone_operator.openai_api import objects
from hone_operator.openai_api.errors import ApiError, bad_request, not_found
from hone_operator.openai_api.requests import JobCreate, finetunejob
from hone_operator.settings import OperatorSettings
from hone_trainer.storage import write_atomically

log = logging.getLogger("hone.api")

PROJECT = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DEFAULT_PROJECT = "default"
#: The largest upload accepted (OpenAI's limit for fine-tuning files is 512 MB).
MAX_FILE_BYTES = 512 * 1024 * 1024


def now() -> int:
    return int(time.time())


def _write_json(path: Path, value: Any) -> None:
    write_atomically(path, json.dumps(value, indent=1, default=str))


def check_purpose(record: dict[str, Any], param: str) -> None:
    """A job trains only on files uploaded for fine-tuning (OpenAI's rule)."""
    if record["purpose"] != "fine-tune":
        raise bad_request(f"{record['id']} was uploaded with purpose {record['purpose']!r}; upload the data with "
                          "purpose 'fine-tune'", param, "invalid_file_purpose")


def merge_status(ftj: FineTuneJob, **status: Any) -> None:
    """Set these keys of ``ftj.status`` (camelCase, as the status stores them), keeping the others."""
    ftj.status = type(ftj.status).model_validate({**ftj.status.model_dump(by_alias=True, exclude_none=True),
                                                  **status})


class LocalStore:
    """Files, FineTuneJobs and events of every project, in a folder."""

    def __init__(self, root: Path, settings: OperatorSettings) -> None:
        self.root = root.resolve()
        self.settings = settings
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified on every job write
        self._event_counts: dict[Path, int] = {}  # events.jsonl -> its lines, counted once per process

    # ---- paths ------------------------------------------------------------------------------

    def project_dir(self, project: str) -> Path:
        if not PROJECT.match(project):
            raise bad_request(f"OpenAI-Project {project!r}: a project is a lowercase name of letters, digits and "
                              "'-' (at most 63), like a Kubernetes namespace", "OpenAI-Project")
        return self.root / "projects" / project

    def _file_dir(self, project: str, file_id: str) -> Path:
        if not objects.FILE_ID.match(file_id):
            raise not_found("file", file_id)
        return self.project_dir(project) / "files" / file_id

    def job_dir(self, project: str, job_id: str) -> Path:
        if not objects.JOB_ID.match(job_id):
            raise not_found("job", job_id)
        return self.project_dir(project) / "jobs" / job_id

    def output_root(self) -> Path:
        return self.root / "output"

    # ---- files ------------------------------------------------------------------------------

    def create_file(self, project: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        file_id = objects.new_id("file")
        folder = self._file_dir(project, file_id)
        folder.mkdir(parents=True)
        (folder / "content").write_bytes(content)
        record = {"id": file_id, "bytes": len(content), "created_at": now(), "filename": filename,
                  "purpose": purpose}
        _write_json(folder / "record.json", record)
        return record

    def get_file(self, project: str, file_id: str, param: str | None = None) -> dict[str, Any]:
        path = self._file_dir(project, file_id) / "record.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise not_found("file", file_id, param) from None

    def file_content(self, project: str, file_id: str) -> Path:
        self.get_file(project, file_id)
        return self._file_dir(project, file_id) / "content"

    def list_files(self, project: str) -> list[dict[str, Any]]:
        folder = self.project_dir(project) / "files"
        records = []
        for child in folder.iterdir() if folder.is_dir() else []:
            try:
                records.append(json.loads((child / "record.json").read_text()))
            except (OSError, ValueError):
                continue  # a file being deleted
        return records

    def delete_file(self, project: str, file_id: str) -> None:
        folder = self._file_dir(project, file_id)
        self.get_file(project, file_id)
        with self.lock:
            objects.check_in_use(self.list_jobs(project), file_id)
            trash = folder.with_name(f".deleted-{file_id}")
            os.replace(folder, trash)  # gone from listings at once
            shutil.rmtree(trash, ignore_errors=True)

    # ---- jobs -------------------------------------------------------------------------------

    def create_job(self, project: str, req: JobCreate) -> FineTuneJob:
        data = {}
        for param, file_id in (("training_file", req.training_file), ("validation_file", req.validation_file)):
            if file_id is not None:
                check_purpose(self.get_file(project, file_id, param), param)
                data[param] = {"uri": f"file://{self.file_content(project, file_id)}"}
        job_id = objects.new_id("ftjob")
        doc = finetunejob(req, self.settings.catalog, project, job_id, data, {"uri": f"file://{self.output_root()}"})
        doc["metadata"].update(uid=job_id.removeprefix("ftjob-"), generation=1,
                               creationTimestamp=datetime.now(timezone.utc).isoformat())
        doc["status"] = {"phase": "ValidatingFiles"}
        ftj = FineTuneJob.model_validate(doc)
        folder = self.job_dir(project, job_id)
        folder.mkdir(parents=True)
        with self.lock:
            self._save(folder, ftj)
            self.add_event(project, job_id, f"Created fine-tuning job: {job_id}")
        return ftj

    def _save(self, folder: Path, ftj: FineTuneJob) -> None:
        _write_json(folder / "finetunejob.json", ftj.model_dump(mode="json", by_alias=True, exclude_none=True))
        self.changed.notify_all()

    def get_job(self, project: str, job_id: str) -> FineTuneJob:
        path = self.job_dir(project, job_id) / "finetunejob.json"
        try:
            return FineTuneJob.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            raise not_found("job", job_id) from None

    def list_jobs(self, project: str) -> list[FineTuneJob]:
        """The project's jobs, newest first."""
        folder = self.project_dir(project) / "jobs"
        jobs = []
        for child in folder.iterdir() if folder.is_dir() else []:
            try:
                jobs.append(self.get_job(project, child.name))
            except ApiError:
                continue
        return sorted(jobs, key=lambda j: (j.metadata.creationTimestamp, j.metadata.name), reverse=True)

    def projects(self) -> list[str]:
        folder = self.root / "projects"
        return sorted(p.name for p in folder.iterdir() if PROJECT.match(p.name)) if folder.is_dir() else []

    def set_status(self, project: str, job_id: str, **status: Any) -> FineTuneJob:
        """Merge these ``status`` keys into the job's status (the rest stay as they are)."""
        return self.update_job(project, job_id, lambda ftj: merge_status(ftj, **status))

    def update_job(self, project: str, job_id: str, change: Callable[[FineTuneJob], None]) -> FineTuneJob:
        """Read, change and write a job under the store's lock (no write is lost to another)."""
        with self.lock:
            ftj = self.get_job(project, job_id)
            change(ftj)
            self._save(self.job_dir(project, job_id), ftj)
            return ftj

    # ---- events -----------------------------------------------------------------------------

    def add_event(self, project: str, job_id: str, message: str, level: str = "info", type: str = "message",  # noqa: A002
                  data: Any = None) -> None:
        with self.lock:
            path = self.job_dir(project, job_id) / "events.jsonl"
            if path not in self._event_counts:
                self._event_counts[path] = sum(1 for _ in path.open()) if path.exists() else 0
            count = self._event_counts[path]
            event = {"id": f"ftevent-{job_id.removeprefix('ftjob-')}-{count:06d}", "created_at": now(),
                     "level": level, "message": message, "type": type, "data": data}
            with path.open("a") as fp:
                fp.write(json.dumps(event) + "\n")
            self._event_counts[path] = count + 1

    def events(self, project: str, job_id: str) -> list[dict[str, Any]]:
        """The job's events, newest first (as OpenAI lists them)."""
        self.get_job(project, job_id)
        path = self.job_dir(project, job_id) / "events.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in reversed(lines) if line.strip()]

    # ---- checkpoints ------------------------------------------------------------------------

    def checkpoint_root(self, ftj: FineTuneJob) -> Path:
        return self.output_root() / (ftj.metadata.namespace or DEFAULT_PROJECT) / ftj.metadata.name / "checkpoints"

    def served_models(self, ftj: FineTuneJob) -> list[tuple[str, str]]:
        """(name, folder) of a succeeded job's model and of each of its checkpoints that has one."""
        from hone_trainer.manifest import MANIFEST
        from hone_trainer.training.checkpoints import CheckpointStore

        assert ftj.status.fineTunedModel is not None
        out = [(ftj.status.fineTunedModel.name, ftj.status.fineTunedModel.artifactUri or "")]
        for ckpt in CheckpointStore(self.checkpoint_root(ftj), keep=0).complete():
            folder = ckpt.path / contract.CHECKPOINT_MODEL_DIR
            if (folder / MANIFEST).exists():
                out.append((objects.checkpoint_name(ftj, ckpt.step), str(folder)))
        return out

    def checkpoints(self, project: str, job_id: str) -> list[dict[str, Any]]:
        """The job's complete checkpoints, newest first."""
        from hone_trainer.training.checkpoints import MARKER, CheckpointStore

        ftj = self.get_job(project, job_id)
        out = []
        for ckpt in reversed(CheckpointStore(self.checkpoint_root(ftj), keep=0).complete()):
            created = int((ckpt.path / MARKER).stat().st_mtime)
            out.append(objects.checkpoint_object(ftj, ckpt.step, created, ckpt.meta))
        return out


class Worker:
    """Runs the store's jobs, oldest first, one at a time, as the operator would in a cluster."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self._shutdown = threading.Event()
        self._interrupt = threading.Event()  # stops the trainer of the running job (pause, cancel, shutdown)
        self._thread = threading.Thread(target=self._loop, name="hone-api-worker", daemon=True)
        self.current: tuple[str, str] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 120) -> None:
        self._shutdown.set()
        self._interrupt.set()
        with self.store.lock:
            self.store.changed.notify_all()
        self._thread.join(timeout)

    def interrupt(self, project: str, job_id: str) -> None:
        """Stop the trainer if it is running this job (the job's spec says why: suspend or cancel)."""
        if self.current == (project, job_id):
            self._interrupt.set()

    def _next(self) -> tuple[str, str] | None:
        runnable = []
        for project in self.store.projects():
            for ftj in self.store.list_jobs(project):
                if objects.phase(ftj) in ("ValidatingFiles", "Queued", "Running") and not ftj.spec.suspend \
                        and not ftj.spec.cancel:
                    runnable.append((ftj.metadata.creationTimestamp, project, ftj.metadata.name))
        return min(runnable)[1:] if runnable else None

    def _loop(self) -> None:
        while not self._shutdown.is_set():
            with self.store.lock:
                picked = self._next()
                if picked is None:
                    self.store.changed.wait(5)
                    continue
                self.current = picked
                self._interrupt.clear()
            try:
                self._run(*picked)
            except Exception as exc:  # noqa: BLE001 - this job fails, the worker goes on
                log.exception("job %s/%s failed", *picked)
                try:
                    self._fail(*picked, "internal_error", f"Hone could not run the job: {exc}", None)
                except Exception:  # noqa: BLE001 - e.g. its folder is gone: nothing left to record it in
                    log.exception("job %s/%s: recording the failure failed too", *picked)
                    time.sleep(1)  # never a hot loop over a job that cannot be recorded
            finally:
                self.current = None

    # ---- one job ----------------------------------------------------------------------------

    def _fail(self, project: str, job_id: str, code: str, message: str, param: str | None) -> None:
        self.store.set_status(project, job_id, phase="Failed", error={"code": code, "message": message, "param": param},
                  completionTime=datetime.now(timezone.utc))
        self.store.add_event(project, job_id, f"The job failed: {message}", level="error")

    def _run(self, project: str, job_id: str) -> None:
        from hone_operator import local
        from hone_operator.reconcile.finetunejob import training_config
        from hone_trainer import contract

        store = self.store
        ftj = store.get_job(project, job_id)
        folder = store.job_dir(project, job_id)
        run_dir = folder / "run"
        run_dir.mkdir(exist_ok=True)
        if ftj.status.fineTunedModel is not None:  # published; its evaluation step was paused or interrupted
            store.set_status(project, job_id, phase="Running")
            self._complete(project, job_id, run_dir / "config.json")
            return
        try:
            config = local.build_config(ftj, folder / "finetunejob.json", run_dir, store.settings)
        except local.LocalSpecError as exc:
            self._fail(project, job_id, "invalid_spec", str(exc), exc.param)
            return
        if objects.phase(ftj) == "ValidatingFiles":
            if not self._validate(project, job_id, config):
                return
            ftj = store.get_job(project, job_id)  # with the checkpoint interval the data gave
            config = local.build_config(ftj, folder / "finetunejob.json", run_dir, store.settings)
        # What ValidatingFiles resolved and counted, also when a paused or interrupted job resumes.
        config = training_config(config, ftj.status.model_dump(by_alias=True, exclude_none=True))
        config_path = run_dir / "config.json"
        config_path.write_text(config.model_dump_json(by_alias=True, indent=2))
        if self._stopped(project, job_id):
            return
        started = ftj.status.startTime or datetime.now(timezone.utc)
        self.store.set_status(project, job_id, phase="Running", startTime=started)
        store.add_event(project, job_id, "Fine-tuning job started")
        (run_dir / "result.json").unlink(missing_ok=True)
        Path(config.progress.path or run_dir / "progress.json").unlink(missing_ok=True)  # a paused run's last report
        seen: dict[str, Any] = {"step": -1, "report": None}

        def on_progress(p: contract.Progress) -> None:
            report = p.to_json_dict()
            if report == seen["report"]:  # read again, not written again
                return
            seen["report"] = report
            self.store.set_status(project, job_id, progress=report)
            if p.step > seen["step"] and p.total_steps:
                seen["step"] = p.step
                data = {"step": p.step, "total_steps": p.total_steps, "train_loss": p.train_loss,
                        "valid_loss": p.validation_loss, "trained_tokens": p.trained_tokens}
                loss = f", training loss={p.train_loss:.4f}" if p.train_loss is not None else ""
                store.add_event(project, job_id, f"Step {p.step}/{p.total_steps}{loss}", type="metrics", data=data)

        rc = local.train(config_path, local.processes(ftj), Path(config.progress.path or ""), on_progress,
                         stop=self._interrupt)
        if rc == 130:
            self._stopped(project, job_id)  # paused or cancelled: it says so; shutdown: it stays Running
            return
        self._finish(project, job_id, rc, run_dir)

    def _validate(self, project: str, job_id: str, config: Any) -> bool:
        from hone_operator import local
        from hone_operator.reconcile.finetunejob import dataset_status, estimate_status

        store = self.store
        store.add_event(project, job_id, "Validating training file")
        try:
            result = local.validate(config)
        except local.ModelUnusable as exc:
            self._fail(project, job_id, "invalid_model", f"the base model cannot be used: {exc}", "model")
            return False
        if not result.ok:
            first = result.problems[0] if result.problems else None
            kind = "validation" if first is not None and first.file == "validation" else "training"
            self._fail(project, job_id, f"invalid_{kind}_file", f"The job failed due to an invalid {kind} file: "
                       f"{result.summary}", f"{kind}_file")
            return False
        # As on OpenAI, a checkpoint at the end of each epoch, the last three kept.
        assert result.hyperparameters is not None
        per_epoch = max(1, -(-result.examples // result.hyperparameters.batch_size))

        def checkpoint_each_epoch(ftj: FineTuneJob) -> None:
            ftj.spec.checkpointing = type(ftj.spec.checkpointing)(intervalSteps=per_epoch, keep=3)

        store.update_job(project, job_id, checkpoint_each_epoch)
        self.store.set_status(project, job_id, phase="Queued", dataset=dataset_status(result),
                  estimate=estimate_status(result, config.prices.training))
        store.add_event(project, job_id, f"Files validated: {result.summary}; "
                                         f"estimated cost ${config.prices.training * result.billable_training_tokens / 1e6:.4f}")
        store.add_event(project, job_id, "Fine-tuning job queued")
        return True

    def _stopped(self, project: str, job_id: str) -> bool:
        """Whether the job was paused or cancelled meanwhile (and if so, its status says so now)."""
        ftj = self.store.get_job(project, job_id)
        if ftj.spec.cancel:
            self.store.set_status(project, job_id, phase="Cancelled", completionTime=datetime.now(timezone.utc))
            self.store.add_event(project, job_id, "Fine-tuning job cancelled")
            return True
        if ftj.spec.suspend:
            self.store.set_status(project, job_id, phase="Suspended")
            self.store.add_event(project, job_id, "Fine-tuning job paused; its checkpoints are kept")
            return True
        return self._shutdown.is_set()

    def _finish(self, project: str, job_id: str, rc: int, run_dir: Path) -> None:
        from hone_operator.reconcile.finetunejob import trained_evaluation
        from hone_trainer import contract

        store = self.store
        raw = (run_dir / "result.json").read_text() if (run_dir / "result.json").exists() else None
        result = contract.parse_result(raw, contract.TrainingResult)
        if rc != 0 or not isinstance(result, contract.TrainingResult) or not result.ok:
            message = result.message if isinstance(result, contract.TrainingResult) and result.message else \
                f"the trainer exited with code {rc}; its log: {run_dir / 'trainer.log'}"
            code = result.error_code if isinstance(result, contract.TrainingResult) and result.error_code else \
                "training_failed"
            self._fail(project, job_id, code, message, None)
            return
        result_files = []
        try:
            losses = json.loads((Path(result.artifact_uri or "") / "manifest.json").read_text()).get("losses") or {}
            csv = objects.results_csv(losses.get("trainCurve") or [], losses.get("validationCurve") or [])
            record = store.create_file(project, "step_metrics.csv", "fine-tune-results", csv.encode())
            result_files.append(record["id"])
        except (OSError, ValueError) as exc:
            log.warning("job %s: no results file: %s", job_id, exc)

        evaluation, events = trained_evaluation(result)

        def change(ftj: FineTuneJob) -> None:
            ftj.metadata.annotations = {**objects.annotations(ftj), objects.RESULT_FILES: json.dumps(result_files)}
            merge_status(ftj, trainedTokens=result.trained_tokens,
                         fineTunedModel={"name": result.fine_tuned_model, "artifactUri": result.artifact_uri,
                                         "manifestSha256": result.manifest_sha256},
                         **({"evaluation": evaluation} if evaluation else {}))

        store.update_job(project, job_id, change)
        store.add_event(project, job_id, f"New fine-tuned model created: {result.fine_tuned_model}")
        self._events(project, job_id, events)
        self._complete(project, job_id, run_dir / "config.json")

    def _events(self, project: str, job_id: str, events: list[Any]) -> None:
        for e in events:
            self.store.add_event(project, job_id, e.message, level="warn" if e.type == "Warning" else "info")

    def _complete(self, project: str, job_id: str, config_path: Path) -> None:
        """The evaluation step, as in a cluster after the model is published: the base model and the fine-tune
        answer the safety suite (and the eval file); then Succeeded. A fine-tune whose safety gate failed is
        still Succeeded, as in a cluster, and not served (see ``Api._url``). A step that cannot run fails the
        job; a paused or interrupted one runs again from the start."""
        from hone_operator import local
        from hone_operator.reconcile.finetunejob import evaluated_evaluation
        from hone_trainer import contract

        store = self.store
        config = contract.TrainerConfig.model_validate_json(config_path.read_text())
        if config.evaluation is not None:
            store.add_event(project, job_id, "Evaluating the fine-tune against its base model: both answer "
                                             f"{local.answered(config.evaluation)}")
            rc, found = local.evaluate(config_path, stop=self._interrupt)
            if rc == 130:
                self._stopped(project, job_id)
                return
            if rc != 0 or found is None or not found.ok:
                why = found.message if found is not None and found.message else \
                    f"the evaluator exited with code {rc}; its log: {config_path.parent / 'evaluation.log'}"
                self._fail(project, job_id, "evaluation_failed", "the evaluation step failed; the fine-tune is "
                           f"published but unevaluated, so it is not served: {why}", None)
                return
            ftj = store.get_job(project, job_id)
            evaluation, events = evaluated_evaluation(
                (ftj.status.evaluation.to_status() if ftj.status.evaluation else {}), found,
                unserved="hone api does not serve it unless started with --serve-despite-failed-safety-check")
            store.set_status(project, job_id, evaluation=evaluation)
            self._events(project, job_id, events)
        store.set_status(project, job_id, phase="Succeeded", completionTime=datetime.now(timezone.utc))
        store.add_event(project, job_id, "The job has successfully completed")


def control(store: LocalStore, worker: Worker, project: str, job_id: str, action: str) -> FineTuneJob:
    """Pause, resume or cancel a job, as ``spec.suspend`` / ``spec.cancel`` do in a cluster."""
    with store.lock:
        objects.check_control(store.get_job(project, job_id), action)

        def change(job: FineTuneJob) -> None:
            if action == "cancel":
                job.spec.cancel = True
            else:
                job.spec.suspend = action == "pause"

        ftj = store.update_job(project, job_id, change)
        running = worker.current == (project, job_id)
        if running and action != "resume":
            worker.interrupt(project, job_id)  # the worker records Cancelled / Suspended when the trainer stops
        elif action == "cancel":
            ftj = store.set_status(project, job_id, phase="Cancelled", completionTime=datetime.now(timezone.utc))
            store.add_event(project, job_id, "Fine-tuning job cancelled")
        elif action == "pause":
            ftj = store.set_status(project, job_id, phase="Suspended")
            store.add_event(project, job_id, "Fine-tuning job paused; its checkpoints are kept")
        else:
            if objects.phase(ftj) == "Suspended":  # back in line: validated already, or still to validate
                ftj = store.set_status(project, job_id,
                                       phase="Queued" if ftj.status.dataset is not None else "ValidatingFiles")
            store.add_event(project, job_id, "Fine-tuning job resumed")
        return ftj


class LocalBackend:
    """``hone api --local``: the store and worker above, and a model server started on demand.

    Any key is accepted unless ``api_keys`` lists the accepted ones; there is no RBAC on one machine, and
    a project is only a name (checked like a namespace's before it becomes a folder)."""

    def __init__(self, store: LocalStore, worker: Worker, pool: Any, api_keys: set[str] | None,
                 serve_despite_failed_safety_check: bool = False) -> None:
        self.store, self.worker, self.pool, self.api_keys = store, worker, pool, api_keys
        self.settings = store.settings
        self.serve_despite_failed_safety_check = serve_despite_failed_safety_check

    def authenticate(self, authorization: str | None) -> Any:
        from hone_operator.openai_api.backend import Caller

        if self.api_keys is not None:
            auth = authorization or ""
            if not auth.startswith("Bearer ") or auth[7:].strip() not in self.api_keys:
                raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        return Caller("local")

    def authorize(self, caller: Any, project: str, verb: str, resource: str) -> None:
        self.store.project_dir(project)  # checks the name

    # files
    def create_file(self, project: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        return self.store.create_file(project, filename, purpose, content)

    def list_files(self, project: str) -> list[dict[str, Any]]:
        return self.store.list_files(project)

    def get_file(self, project: str, file_id: str) -> dict[str, Any]:
        return self.store.get_file(project, file_id)

    def file_response(self, project: str, file_id: str) -> Any:
        from starlette.responses import FileResponse

        return FileResponse(self.store.file_content(project, file_id), media_type="application/octet-stream")

    def delete_file(self, project: str, file_id: str) -> None:
        self.store.delete_file(project, file_id)

    # jobs
    def create_job(self, project: str, req: JobCreate) -> FineTuneJob:
        return self.store.create_job(project, req)

    def list_jobs(self, project: str) -> list[FineTuneJob]:
        return self.store.list_jobs(project)

    def get_job(self, project: str, job_id: str) -> FineTuneJob:
        return self.store.get_job(project, job_id)

    def control(self, project: str, job_id: str, action: str) -> FineTuneJob:
        return control(self.store, self.worker, project, job_id, action)

    def events(self, project: str, job_id: str) -> list[dict[str, Any]]:
        return self.store.events(project, job_id)

    def checkpoints(self, project: str, job_id: str) -> list[dict[str, Any]]:
        return self.store.checkpoints(project, job_id)

    # models
    def fine_tunes(self, project: str) -> list[FineTuneJob]:
        return [j for j in self.store.list_jobs(project) if objects.is_fine_tune(j)]

    def delete_model(self, project: str, job: FineTuneJob) -> None:
        def mark(ftj: FineTuneJob) -> None:
            ftj.metadata.annotations = {**objects.annotations(ftj), objects.MODEL_DELETED: "true"}

        self.store.update_job(project, job.metadata.name, mark)
        self.pool.stop()  # a running server may hold it
        assert job.status.fineTunedModel is not None
        artifact = job.status.fineTunedModel.artifactUri
        if artifact and Path(artifact).is_dir() and self.store.output_root() in Path(artifact).resolve().parents:
            shutil.rmtree(artifact, ignore_errors=True)  # only ever under the API's own output folder

    def safety_override(self, project: str, job: FineTuneJob) -> tuple[bool, str]:
        return self.serve_despite_failed_safety_check, "start hone api with --serve-despite-failed-safety-check"

    def inference_url(self, project: str, name: str, job: FineTuneJob | None) -> str:
        from hone_operator import local
        from hone_operator.api.v1alpha1.finetunejob import BaseModelSpec
        from hone_operator.openai_api.serving import Target

        catalog = self.settings.catalog
        if job is None:
            base_name, base_uri = name, catalog[name].uri
        else:
            base_uri = job.spec.baseModel.uri
            base_name = next((n for n, e in catalog.items() if e.uri == base_uri), base_uri)
        # The base's fine-tunes, but none whose safety check failed (unless told to serve those).
        adapters = tuple(sorted(item for j in self.fine_tunes(project)
                                if j.spec.baseModel.uri == base_uri and j.status.fineTunedModel is not None
                                and (self.serve_despite_failed_safety_check or objects.failed_safety_check(j) is None)
                                for item in self.store.served_models(j)))
        location = local.base_model_source(BaseModelSpec(uri=base_uri), self.store.root).location
        return self.pool.url(Target(project, base_name, location, adapters))
