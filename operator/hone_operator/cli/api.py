"""``hone api``: OpenAI's fine-tuning API over Hone (:mod:`hone_operator.openai_api`)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from hone_operator.cli.common import fail, require_runtime


@click.command()
@click.option("--local", "local_mode", is_flag=True,
              help="Keep files and jobs in --workdir and run them on this machine (no cluster).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, help="Port to listen on.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".hone/api"),
              show_default=True, help="Where local mode keeps uploaded files, jobs, checkpoints and models.")
@click.option("--api-keys-file", type=click.Path(dir_okay=False, exists=True),
              help="Local mode: accepted API keys, one per line (default: any key, or none, is accepted).")
@click.option("--store-credentials", type=click.Path(file_okay=False, exists=True),
              help="Cluster mode: a folder with the api_store's credentials, one file per key (a mounted Secret).")
@click.option("--key-identities", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Cluster mode: API keys that stand for identities, a YAML list of {sha256, user, groups, "
                   "namespace} (read again when it changes); other keys must be Kubernetes tokens.")
@click.option("--serve-despite-failed-safety-check", is_flag=True,
              help="Local mode: serve fine-tunes whose safety check failed too (in a cluster, the FineTuneJob's "
                   "annotation hone.dev/serve-despite-failed-safety-check=true does it, job by job).")
def api(local_mode: bool, host: str, port: int, workdir: Path, api_keys_file: str | None,
        store_credentials: str | None, key_identities: Path | None, serve_despite_failed_safety_check: bool) -> None:
    """Serve OpenAI's fine-tuning API: files, fine_tuning.jobs (events, checkpoints, pause, resume, cancel),
    models, and chat/completions routed by model name.

    In a cluster (the default; kubeconfig or in-cluster credentials), a job is a FineTuneJob that the
    operator runs, the API key is a Kubernetes bearer token (checked with a TokenReview), every call is
    authorised with a SubjectAccessReview against the caller's RBAC in the project's namespace (the
    client's project=, else the ServiceAccount's own namespace), and uploads go to the settings' api_store.

    With --local, jobs run here one at a time with the local trainer and evaluation step (as `hone run`),
    and a model is served by the built-in server, started when a request names it; a fine-tune whose safety
    check failed is refused (403 model_failed_safety_check) unless --serve-despite-failed-safety-check. Point the openai client at
    http://HOST:PORT/v1; its project= (the OpenAI-Project header) keeps projects apart. Base models are the
    settings' catalog (default: smollm2-135m-instruct, the embedded model).
    """
    import logging

    import uvicorn

    from hone_operator.openai_api.app import Api, create_app
    from hone_operator.settings import load

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load()
    if not local_mode:
        if serve_despite_failed_safety_check:
            fail("--serve-despite-failed-safety-check is for --local; in a cluster, annotate the FineTuneJob "
                 "hone.dev/serve-despite-failed-safety-check=true")
        from hone_operator.kube import Kube, load_api_client
        from hone_trainer import __version__
        from hone_operator.openai_api.cluster import ClusterBackend, KeyIdentities

        if not settings.api_store:
            fail("hone api in a cluster needs the setting api_store (HONE_API_STORE=s3://bucket/prefix): where "
                 "uploaded files and the models of its jobs are kept; or run `hone api --local` on one machine")
        try:
            client = load_api_client()
            client.user_agent = f"hone-api/{__version__}"  # its requests apart from the operator's in audit logs
            kube = Kube(client)
        except Exception as exc:  # noqa: BLE001 - no kubeconfig and not in a pod
            fail(f"no cluster to talk to ({exc}); set KUBECONFIG, or run `hone api --local` on one machine")
        try:
            keys = KeyIdentities(key_identities) if key_identities else None
        except (OSError, ValueError) as exc:
            fail(f"--key-identities {key_identities}: {exc}")
        app = create_app(Api(ClusterBackend(kube, settings, store_credentials, keys)))
        click.echo(f"OpenAI-compatible fine-tuning API at http://{host}:{port}/v1 over the cluster; state in "
                   f"FineTuneJobs and {settings.api_store}")
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return

    require_runtime("api --local", "hone_trainer.training.validate")
    from hone_operator.openai_api.local import LocalBackend, LocalStore, Worker
    from hone_operator.openai_api.serving import ServerPool

    keys = None
    if api_keys_file:
        keys = {line.strip() for line in Path(api_keys_file).read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    store = LocalStore(workdir, settings)
    worker = Worker(store)
    pool = ServerPool(workdir.resolve(), settings)
    app = create_app(Api(LocalBackend(store, worker, pool, keys, serve_despite_failed_safety_check)))
    if serve_despite_failed_safety_check:
        click.echo("Warning: fine-tunes whose safety check failed are served too (--serve-despite-failed-safety-"
                   "check)", err=True)
    worker.start()
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler it found:
    # this one, which leaves through the finally below (the trainer checkpoints, the model server stops).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    click.echo(f"OpenAI-compatible fine-tuning API at http://{host}:{port}/v1 (state in {workdir}); Ctrl-C stops")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        worker.stop()
        pool.stop()
