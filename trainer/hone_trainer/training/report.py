"""Progress from rank 0: into the FineTuneJob's status, a file, logs and /metrics.

* ``kubernetes``: a JSON merge patch of ``status.progress`` (and, after a
  checkpoint, ``status.checkpoints``) through the status subresource, with the pod's ServiceAccount token (its Role allows exactly
  that). Plain HTTPS: the trainer needs no Kubernetes client.
* ``file``: the same JSON, rewritten atomically (``hone run`` reads it).
* always: one JSON log line per report, and Prometheus gauges on
  ``metrics_port``: ``hone_trainer_step``, ``hone_trainer_loss``,
  ``hone_trainer_tokens_per_second`` and ``hone_trainer_tokens_processed``
  (named apart from the operator's ``hone_training_tokens_total`` so that a
  sum over both never counts a token twice).

A report that cannot be delivered is logged and dropped: progress reporting
never stops training. The last step's report is the exception: it holds the
final curves and trained tokens the job's status keeps, so it is retried with
backoff for up to ``FINAL_REPORT_SECONDS`` (``HONE_FINAL_REPORT_SECONDS``)
while the API server is slow or unreachable, then dropped the same way.

Before training starts, :func:`check_access` proves the one permission the
trainer has (an empty merge patch of its status, which changes nothing): a
ServiceAccount the API server refuses (401, 403) fails the
run at once with :class:`ReportingForbidden`, naming the request and the
server's answer, instead of training for hours with no progress shown.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from hone_trainer import __version__
from hone_trainer.contract import CheckpointInfo, Progress, ProgressReporting
from hone_trainer.storage import write_atomically

log = logging.getLogger("hone.trainer.report")
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: How long a refused access check is retried (``HONE_ACCESS_CHECK_SECONDS``): RBAC the operator just
#: created may take a moment to reach every API server of an HA control plane.
ACCESS_RETRY_SECONDS = 10.0
#: How long the last step's report is retried (``HONE_FINAL_REPORT_SECONDS``).
FINAL_REPORT_SECONDS = 60.0


class ReportingForbidden(RuntimeError):
    """The API server refuses the trainer's status patch: its ServiceAccount cannot report progress."""


def check_access(settings: ProgressReporting, retry_seconds: float | None = None) -> None:
    """With ``kind: kubernetes``: an empty JSON merge patch of the FineTuneJob's status, the request every
    report makes, with nothing in it. 401 and 403 raise :class:`ReportingForbidden` once ``retry_seconds``
    have passed; any other failure (the API server unreachable for now) is logged, and reports go on trying."""
    if settings.kind != "kubernetes":
        return
    if retry_seconds is None:
        retry_seconds = float(os.environ.get("HONE_ACCESS_CHECK_SECONDS", ACCESS_RETRY_SECONDS))
    deadline = time.monotonic() + retry_seconds
    delay = 0.5
    while True:
        try:
            _patch_status(settings, {})
            return
        except urllib.error.HTTPError as exc:
            if exc.code not in (401, 403):
                log.warning("progress access check: HTTP %s %s", exc.code, exc.reason)
                return
            try:
                detail = json.loads(exc.read() or b"{}").get("message") or exc.reason
            except ValueError:
                detail = exc.reason
            if time.monotonic() >= deadline:
                raise ReportingForbidden(
                    f"the trainer may not report progress: PATCH finetunejobs/{settings.name}/status in namespace "
                    f"{settings.namespace} answered {exc.code}: {detail}. The operator gives each job's trainer a "
                    "ServiceAccount with a Role that allows exactly this (kubectl get sa,role,rolebinding -l "
                    f"hone.dev/finetunejob={settings.name}); check that they exist unchanged and that no policy "
                    "strips the pod's token") from None
            print(f"hone-trainer: progress access check: {exc.code} {detail}; trying again", file=sys.stderr,
                  flush=True)
        except (OSError, KeyError) as exc:  # unreachable for now, or no API server named (not in a pod)
            log.warning("progress access check: %s (reports will keep trying)", exc)
            return
        time.sleep(delay)
        delay = min(delay * 2, 4.0)


class Reporter:
    def __init__(self, settings: ProgressReporting, metrics_port: int | None, labels: dict[str, str]):
        self.settings = settings
        self.labels = labels
        self._gauges = None
        if metrics_port:
            try:
                from prometheus_client import Gauge, start_http_server

                names = list(labels)
                self._gauges = {
                    "step": Gauge("hone_trainer_step", "Optimizer steps done.", names),
                    "total": Gauge("hone_trainer_total_steps", "Optimizer steps in the run.", names),
                    "loss": Gauge("hone_trainer_loss", "Training loss over the last interval.", names),
                    "val": Gauge("hone_trainer_validation_loss", "Latest validation loss.", names),
                    "tps": Gauge("hone_trainer_tokens_per_second", "Training throughput.", names),
                    "tokens": Gauge("hone_trainer_tokens_processed", "Billable tokens processed so far.", names),
                }
                start_http_server(metrics_port)
            except OSError as exc:
                log.warning("metrics port %s unavailable: %s", metrics_port, exc)

    def report(self, progress: Progress, *, final: bool = False,
               checkpoints: list[CheckpointInfo] | None = None) -> None:
        """Deliver one report; ``final`` (the last step's) is retried until it lands or its time is up.
        ``checkpoints`` (after a save: every complete checkpoint kept) replace ``status.checkpoints``."""
        progress.updated_at = datetime.now(timezone.utc).replace(microsecond=0)
        data = progress.to_json_dict()
        status: dict = {"progress": data}
        if checkpoints is not None:
            status["checkpoints"] = [c.to_json_dict() for c in checkpoints]
        print(json.dumps({"event": "progress", **self.labels, **data}), flush=True, file=sys.stdout)
        if self._gauges:
            values = {"step": progress.step, "total": progress.total_steps, "loss": progress.train_loss,
                      "val": progress.validation_loss, "tps": progress.tokens_per_second,
                      "tokens": progress.trained_tokens}
            for key, value in values.items():
                if value is not None:
                    self._gauges[key].labels(**self.labels).set(value)
        deadline = time.monotonic() + (float(os.environ.get("HONE_FINAL_REPORT_SECONDS", FINAL_REPORT_SECONDS))
                                       if final else 0.0)
        delay = 0.5
        while True:
            try:
                if self.settings.kind == "kubernetes":
                    _patch_status(self.settings, {"status": status})
                elif self.settings.kind == "file" and self.settings.path:
                    write_atomically(Path(self.settings.path), json.dumps(data), durable=False)
                return
            except Exception as exc:  # never let reporting stop training
                refused = isinstance(exc, urllib.error.HTTPError) and exc.code in (400, 401, 403, 404, 422)
                if refused or time.monotonic() + delay > deadline:
                    log.warning("could not report progress: %s", exc)
                    return
                log.warning("could not report the final progress yet: %s; trying again", exc)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def _patch_status(s: ProgressReporting, patch: dict) -> None:
    """A JSON merge patch of the FineTuneJob's status subresource, with the pod's ServiceAccount token."""
    api = os.environ.get("HONE_KUBERNETES_API") or (
        f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}")
    token_file = Path(os.environ.get("HONE_KUBERNETES_TOKEN_FILE", SA_DIR / "token"))
    url = f"{api}/apis/hone.dev/v1alpha1/namespaces/{s.namespace}/finetunejobs/{s.name}/status"
    body = json.dumps(patch).encode()
    req = urllib.request.Request(url, data=body, method="PATCH", headers={
        "Content-Type": "application/merge-patch+json", "Accept": "application/json",
        "Authorization": f"Bearer {token_file.read_text().strip()}" if token_file.exists() else "",
        "User-Agent": f"hone-trainer/{__version__}"})
    context = None
    if api.startswith("https://"):
        ca = Path(os.environ.get("HONE_KUBERNETES_CA_FILE", SA_DIR / "ca.crt"))
        context = ssl.create_default_context(cafile=str(ca) if ca.exists() else None)
    with urllib.request.urlopen(req, timeout=10, context=context) as resp:
        resp.read()
