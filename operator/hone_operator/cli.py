"""The ``hone`` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hone_operator import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hone")
def cli() -> None:
    """Hone: self-hosted fine-tuning and serving on Kubernetes."""


@cli.command()
@click.option("--check", is_flag=True, help="Fail if crds/ differs from the models instead of printing.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Write the files into this folder.")
def crds(check: bool, out: Path | None) -> None:
    """Print the CustomResourceDefinitions (pipe into `kubectl apply -f -`)."""
    from hone_operator.api import crdgen

    if check or out:
        args = ["--check"] if check else []
        args += ["--out", str(out)] if out else []
        sys.exit(crdgen.main(args))
    click.echo("---\n".join(crdgen.render_all().values()), nl=False)


DEFAULT_MODEL = "embedded://smollm2-135m-instruct"


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"hone: error: {message}", err=True)
    sys.exit(code)


@cli.command()
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--validation", type=click.Path(dir_okay=False, path_type=Path), help="Held-out validation JSONL.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Base model whose tokenizer and chat template count the tokens: a Hugging Face id, "
                   "a local directory, a .gguf file or embedded://smollm2-135m-instruct.")
@click.option("--epochs", default="auto", show_default=True, help="Epochs for the cost estimate (a number or auto).")
@click.option("--max-seq-length", default=2048, show_default=True, help="Longest example, in tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as the operator stores it in status.")
def validate(data: Path, validation: Path | None, model: str, epochs: str, max_seq_length: int, as_json: bool) -> None:
    """Check a chat JSONL file and count its tokens, like the ValidatingFiles step.

    Every problem is reported with its line number; token counts use the base
    model's own tokenizer and chat template, exactly as training does. Exits 4
    when the data is not trainable.
    """
    import json as jsonlib

    try:
        from hone_trainer import contract, models
        from hone_trainer.training.formatting import TemplateError
        from hone_trainer.training.validate import validate as run_validation
    except ImportError as exc:
        _fail(f"`hone validate` needs the runtime extra (pip install 'hone[runtime]'): {exc}")
    from hone_operator.reconcile.finetunejob import dataset_status, estimate_status
    from hone_operator.settings import load

    settings = load()
    for path in (data, validation):
        if path is not None and not path.exists():
            _fail(f"{path}: no such file")
    try:
        epochs_value: int | str = "auto" if epochs == "auto" else int(epochs)
    except ValueError:
        _fail(f"--epochs {epochs!r}: give a whole number or auto")
    config = contract.TrainerConfig(
        job=contract.JobIdentity(namespace="local", name="validate", uid="local", fine_tuned_model="local"),
        base_model=contract.ModelSource(location=model if "://" in model or not Path(model).exists()
                                        else str(Path(model).resolve())),
        training_data=contract.DataFile(location=str(data)),
        validation_data=contract.DataFile(location=str(validation)) if validation else None,
        epochs=epochs_value, max_seq_length=max_seq_length, prices=settings.prices,
        output_uri="unused", checkpoint_dir="unused", result_path=None)
    try:
        tokenizer = models.load_tokenizer(models.resolve(config.base_model))
        result = run_validation(config, tokenizer)
    except (models.ModelError, TemplateError) as exc:
        _fail(f"--model {model}: {exc}", 5)
    if as_json:
        status = {"dataset": dataset_status(result)}
        if result.ok:
            status["estimate"] = estimate_status(result, settings)
        click.echo(jsonlib.dumps(status, indent=2))
    else:
        _print_validation(data, result, settings.prices.training)
    sys.exit(0 if result.ok else 4)


def _print_validation(data: Path, result, price: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)  # long problem messages stay whole lines (grep, logs)
    table = Table(title=f"{data}", show_header=False, box=None)
    rows = [("examples", result.examples), ("validation examples", result.validation_examples),
            ("tokens per epoch", result.tokens_per_epoch), ("trained tokens per epoch", result.trained_tokens_per_epoch),
            ("longest example", result.max_example_tokens), ("invalid lines", result.invalid_lines)]
    if result.hyperparameters:
        hp = result.hyperparameters
        rows += [("epochs / batch size / lr multiplier",
                  f"{hp.epochs} / {hp.batch_size} / {hp.learning_rate_multiplier:g}"),
                 ("billable training tokens", result.billable_training_tokens),
                 ("estimated cost", f"${result.estimated_cost_usd:.2f} at ${price:g} per 1M tokens")]
    for name, value in rows:
        table.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    for kind, n in sorted(result.problem_counts.items()):
        console.print(f"[red]{n} x {kind}[/red]")
    for p in result.problems:
        where = f"{p.file} line {p.line}" if p.line else p.file
        console.print(f"  [red]{where}[/red]: {p.message}")
    for w in result.warnings:
        console.print(f"  [yellow]warning[/yellow]: {w}")
    console.print("[green]trainable[/green]" if result.ok else f"[red]not trainable[/red]: {result.summary}")


def _documents(manifest: Path, strict: bool = True) -> list[dict]:
    """The YAML documents of a manifest; ``strict``: every one must be a FineTuneJob or ModelServing."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    except yaml.YAMLError as exc:
        _fail(f"{manifest}: not valid YAML: {exc}")
    if not strict:
        return [d for d in docs if isinstance(d, dict)]
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or doc.get("kind") not in ("FineTuneJob", "ModelServing"):
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            _fail(f"{manifest}: document {i + 1} is {kind!r}; Hone reads FineTuneJob and ModelServing manifests")
    return docs


def _first(manifest: Path, kind: str) -> dict:
    """The first document of ``kind`` in a manifest (others, e.g. a ConfigMap beside it, are skipped)."""
    doc = next((d for d in _documents(manifest, strict=False) if d.get("kind") == kind), None)
    if doc is None:
        _fail(f"{manifest}: no {kind} in this file")
    return doc


def _parse(manifest: Path, doc: dict, namespace: str, uid: str | None = None):
    from pydantic import ValidationError

    from hone_operator.api.v1alpha1 import FineTuneJob, ModelServing
    from hone_operator.reconcile.spec import spec_error

    model = FineTuneJob if doc["kind"] == "FineTuneJob" else ModelServing
    meta = {"namespace": namespace, **(doc.get("metadata") or {})}
    if uid:
        meta["uid"] = uid
    try:
        return model.model_validate({**doc, "metadata": meta, "status": {}})
    except ValidationError as exc:
        _fail(f"{manifest}: {doc['kind']} {meta.get('name')}: {spec_error(exc)[1]}")


@cli.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("-n", "--namespace", default="default", show_default=True,
              help="Namespace to render into when a manifest names none.")
def render(manifests: tuple[Path, ...], namespace: str) -> None:
    """Print the Kubernetes objects the operator creates for FineTuneJob and ModelServing manifests.

    Uses the operator's own builders, so a GitOps pull request can show what
    applying the manifests will run. A ModelServing is rendered as it will be
    once the FineTuneJobs it serves have Succeeded: give their manifests too
    (in the same file or as more arguments). Object UIDs are placeholders.
    """
    import yaml

    from hone_operator.builders import finetunejob as ftj_build
    from hone_operator.builders import modelserving as msv_build
    from hone_operator.settings import load

    settings = load()
    parsed = [(m, _parse(m, doc, namespace, "00000000-0000-0000-0000-000000000000"))
              for m in manifests for doc in _documents(m)]
    jobs = {(o.metadata.namespace, o.metadata.name): o for _, o in parsed if o.kind == "FineTuneJob"}
    out = []
    for manifest, obj in parsed:
        try:
            if obj.kind == "FineTuneJob":
                out.extend(ftj_build.all_objects(obj, settings))
                continue
            ftjs = {}
            for param, name in msv_build.referenced_jobs(obj):
                job = jobs.get((obj.metadata.namespace, name))
                if job is None:
                    _fail(f"{manifest}: ModelServing {obj.metadata.name} serves FineTuneJob {name!r} ({param}); "
                          "give its manifest too so that its published artifact is known")
                config, _ = ftj_build.resolve(job, settings)
                body = job.model_dump(by_alias=True, exclude_none=True, mode="json")
                body["status"] = {"phase": "Succeeded", "fineTunedModel": {
                    "name": ftj_build.fine_tuned_model_name(job), "artifactUri": config.output_uri}}
                ftjs[name] = body
            out.extend(msv_build.all_objects(obj, settings, ftjs))
        except (ftj_build.SpecError, msv_build.Waiting) as exc:
            param = getattr(exc, "param", "")
            _fail(f"{manifest}: {obj.kind} {obj.metadata.name}: {exc}" if not param or str(exc).startswith(param)
                  else f"{manifest}: {obj.kind} {obj.metadata.name}: {param}: {exc}")
    click.echo(f"# Objects the Hone operator creates for {', '.join(map(str, manifests))} (UIDs are placeholders)")
    click.echo(yaml.safe_dump_all(out, sort_keys=False), nl=False)


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".hone/run"),
              show_default=True, help="Where the trainer config, progress and logs of local runs go.")
def run(manifest: Path, workdir: Path) -> None:
    """Fine-tune on this machine from a FineTuneJob manifest (the same YAML as for kubectl apply).

    Same validation, same trainer (one process per GPU the spec asks for, one
    on a CPU machine), same checkpoints and publishing. pvc://<claim>/<path>
    means $HONE_PVC_ROOT/<claim>/<path> (default ./.hone/pvc); file:// paths
    are relative to the manifest. Ctrl-C saves a checkpoint; run the same
    command again to resume.
    """
    import hashlib
    import uuid

    from hone_operator import local
    from hone_operator.settings import load

    try:
        from hone_trainer import contract, models
        from hone_trainer.training.formatting import TemplateError
        from hone_trainer.training.validate import validate as run_validation
    except ImportError as exc:
        _fail(f"`hone run` needs the runtime extra (pip install 'hone[runtime]'): {exc}")
    doc = _first(manifest, "FineTuneJob")
    namespace = (doc.get("metadata") or {}).get("namespace") or "local"
    # A stable uid: the same manifest resumes the same job and keeps its model name.
    key = f"{namespace}/{(doc.get('metadata') or {}).get('name')}"
    ftj = _parse(manifest, doc, namespace, str(uuid.UUID(hashlib.sha256(key.encode()).hexdigest()[:32])))
    settings = load()
    job_dir = workdir / ftj.metadata.namespace / ftj.metadata.name
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        config = local.build_config(ftj, manifest, job_dir.resolve(), settings)
    except local.LocalSpecError as exc:
        _fail(f"{manifest}: {exc}")
    config_path = job_dir / "config.json"
    config_path.write_text(config.model_dump_json(by_alias=True, indent=2))
    (job_dir / "result.json").unlink(missing_ok=True)

    click.echo(f"Validating {config.training_data.location} with the tokenizer of {config.base_model.location}")
    try:
        tokenizer = models.load_tokenizer(models.resolve(config.base_model),
                                          trust_remote_code=config.base_model.trust_remote_code)
        result = run_validation(config, tokenizer)
    except (models.ModelError, TemplateError) as exc:
        _fail(f"{manifest}: spec.baseModel.uri: {exc}", 5)
    _print_validation(Path(config.training_data.location), result, settings.prices.training)
    if not result.ok:
        sys.exit(4)

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    nproc = local.processes(ftj)
    columns = [TextColumn("[bold]training[/bold]"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"), TimeRemainingColumn()]
    with Progress(*columns) as bar:
        task = bar.add_task("train", total=None, loss="-", tps="-")

        def show(p: contract.Progress) -> None:
            bar.update(task, completed=p.step, total=p.total_steps or None,
                       loss=f"{p.train_loss:.4f}" if p.train_loss is not None else "-",
                       tps=f"{p.tokens_per_second:,.0f}" if p.tokens_per_second else "-")

        rc = local.train(config_path, nproc, Path(config.progress.path or ""), show)
    if rc == 130:
        click.echo("Interrupted: a checkpoint was saved. Run the same command again to resume.", err=True)
        sys.exit(130)
    trained = contract.parse_result((job_dir / "result.json").read_text() if (job_dir / "result.json").exists()
                                    else None, contract.TrainingResult)
    if rc != 0 or not isinstance(trained, contract.TrainingResult) or not trained.ok:
        reason = trained.message if isinstance(trained, contract.TrainingResult) and trained.message else \
            "\n".join((job_dir / "trainer.log").read_text(errors="replace").splitlines()[-15:])
        _fail(f"training failed (exit code {rc}): {reason}\nfull log: {job_dir / 'trainer.log'}", rc or 1)
    click.echo(f"Succeeded\n  fineTunedModel: {trained.fine_tuned_model}\n  artifact:       {trained.artifact_uri}"
               f"\n  trainedTokens:  {trained.trained_tokens:,}"
               f"\n  cost:           ${contract.cost_usd(trained.trained_tokens, settings.prices.training):.4f}"
               f"\n  trainLoss:      {trained.train_loss:.4f}" + (
                   f"\n  validationLoss: {trained.initial_validation_loss:.4f} before, "
                   f"{trained.validation_loss:.4f} after fine-tuning"
                   if trained.validation_loss is not None and trained.initial_validation_loss is not None else ""))


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--job", "job_manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Serve the result of this FineTuneJob manifest instead of a ModelServing.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on.")
@click.option("--api-keys-file", type=click.Path(dir_okay=False, exists=True),
              help="Accepted API keys, one per line (default: no key needed).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".hone/run"),
              show_default=True, help="Where `hone run` keeps its results.")
def serve(manifest: Path | None, job_manifest: Path | None, host: str, port: int, api_keys_file: str | None,
          workdir: Path) -> None:
    """Serve a ModelServing manifest (or --job JOB.yaml) on this machine with the built-in server.

    Its FineTuneJobs resolve to what `hone run` published for them. The server
    speaks OpenAI's API at http://HOST:PORT/v1 (chat/completions, completions,
    models) and exposes /metrics, /health and /ready; stop it with Ctrl-C.
    """
    import logging

    from hone_operator import local
    from hone_operator.api.v1alpha1 import ModelServing

    if (manifest is None) == (job_manifest is None):
        _fail("give a ModelServing manifest or --job JOB.yaml (one of them)")
    try:
        from hone_trainer.serving import loading
        from hone_trainer.serving.app import serve as run_server
    except ImportError as exc:
        _fail(f"`hone serve` needs the runtime extra (pip install 'hone[runtime]'): {exc}")
    if job_manifest is not None:
        job = _parse(job_manifest, _first(job_manifest, "FineTuneJob"), "local")
        msv = ModelServing.model_validate({"metadata": {"name": job.metadata.name, "namespace": job.metadata.namespace},
                                           "spec": {"fineTuneJobRef": {"name": job.metadata.name}}})
        source = job_manifest
    else:
        assert manifest is not None
        msv = _parse(manifest, _first(manifest, "ModelServing"), "local")
        source = manifest
        if msv.spec.apiKeySecret is not None and not api_keys_file:
            click.echo("note: spec.apiKeySecret names a Secret, which exists only in a cluster; locally no key is "
                       "needed unless you pass --api-keys-file", err=True)
        if msv.spec.runtime == "vllm":
            click.echo("note: runtime vllm is for GPU clusters; serving with the built-in server here", err=True)
    try:
        config = local.server_config(msv, source, workdir, host, port, api_keys_file)
    except local.LocalSpecError as exc:
        _fail(f"{source}: {exc}")
    except loading.ServingError as exc:
        _fail(f"{source}: {exc}", 5)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    click.echo(f"Loading {config.base_model.location}"
               + "".join(f" + {a.name or a.location}" for a in config.adapters)
               + f"; the API will be at http://{host}:{port}/v1 (Ctrl-C stops)")
    sys.exit(run_server(config))


@cli.command()
@click.argument("model")
@click.argument("message", required=False)
@click.option("--url", default="http://127.0.0.1:8000/v1", show_default=True, envvar="HONE_URL",
              help="Base URL of an OpenAI-compatible API (env HONE_URL).")
@click.option("--api-key", envvar="OPENAI_API_KEY", default="", help="API key (env OPENAI_API_KEY).")
@click.option("--system", "system_prompt", help="A system message to start the conversation with.")
@click.option("--max-tokens", default=256, show_default=True, help="Longest answer, in tokens.")
@click.option("--temperature", default=0.0, show_default=True, help="0 answers deterministically.")
def chat(model: str, message: str | None, url: str, api_key: str, system_prompt: str | None, max_tokens: int,
         temperature: float) -> None:
    """Ask MODEL a question (one-shot with MESSAGE, else an interactive chat) through /v1/chat/completions.

    Works against `hone serve`, a ModelServing's Service (kubectl port-forward)
    or any OpenAI-compatible endpoint. Prints the answer as it streams, then
    the tokens it used.
    """
    from hone_operator.chat_client import ChatError, stream_chat

    history = [{"role": "system", "content": system_prompt}] if system_prompt else []

    def ask(text: str) -> bool:
        history.append({"role": "user", "content": text})
        try:
            answer, usage = stream_chat(url, api_key, model, history, max_tokens, temperature,
                                        lambda piece: click.echo(piece, nl=False))
        except ChatError as exc:
            click.echo(f"hone: error: {exc}", err=True)
            history.pop()
            return False
        history.append({"role": "assistant", "content": answer})
        click.echo("")
        if usage:
            click.echo(f"[{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens]", err=True)
        return True

    if message is not None:
        sys.exit(0 if ask(message) else 1)
    click.echo(f"Chatting with {model} at {url}; an empty line or Ctrl-D ends.", err=True)
    while True:
        try:
            text = input("> ")
        except (EOFError, KeyboardInterrupt):
            break
        if not text.strip():
            break
        ask(text)


@cli.command()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def operator(verbose: bool) -> None:
    """Run the operator against the current cluster (kubeconfig or in-cluster).

    Namespaces, images, prices and ports come from HONE_* environment variables
    or the YAML file named by HONE_CONFIG_FILE.
    """
    run_operator(verbose)


def run_operator(verbose: bool = False) -> None:
    import asyncio
    import logging

    import kopf

    from hone_operator import main as _handlers  # noqa: F401  (registers the handlers)
    from hone_operator.settings import load

    settings = load()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kubernetes", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # kopf logs every handled event at INFO; the controller logs what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    async def operate() -> None:
        await kopf.operator(
            clusterwide=not settings.watch_namespaces,
            namespaces=settings.watch_namespaces,
            standalone=True,
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
        )

    async def lead_then_operate() -> None:
        import os
        import socket
        import uuid

        from hone_operator.kube import Kube, load_api_client
        from hone_operator.leader import LeaderElector, serve_health_while

        namespace = settings.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        elector = LeaderElector(Kube(load_api_client(pool_size=2)), namespace, settings.lease_name, identity,
                                settings.lease_duration_seconds)
        leading = asyncio.Event()
        health = asyncio.create_task(serve_health_while(settings.health_port, leading)) if settings.health_port \
            else None
        await elector.acquire()
        leading.set()
        if health is not None:
            await health
        work = asyncio.create_task(operate())
        keeper = asyncio.create_task(elector.keep())
        done, _ = await asyncio.wait({work, keeper}, return_when=asyncio.FIRST_COMPLETED)
        if keeper in done:  # leadership lost: stop at once, the pod restarts as a standby
            work.cancel()
            logging.getLogger("hone.leader").error("stopping: this replica no longer leads")
            raise SystemExit(1)
        keeper.cancel()
        await work

    asyncio.run(lead_then_operate() if settings.leader_election else operate())


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
