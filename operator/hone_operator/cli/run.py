"""``hone run``: a FineTuneJob manifest fine-tuned on this machine (local mode)."""

from __future__ import annotations

import hashlib
import sys
import uuid
from pathlib import Path
from typing import Any

import click

from hone_operator.cli.common import fail, first_document, parse_manifest, require_runtime
from hone_operator.cli.validate import print_validation


@click.command()
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
    from hone_operator import local
    from hone_operator.settings import load

    require_runtime("run")
    ftj = _parse_job(manifest)
    settings = load()
    job_dir = workdir / ftj.metadata.namespace / ftj.metadata.name
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        config = local.build_config(ftj, manifest, job_dir.resolve(), settings)
    except local.LocalSpecError as exc:
        fail(f"{manifest}: {exc}")
    config_path = job_dir / "config.json"
    config_path.write_text(config.model_dump_json(by_alias=True, indent=2))
    (job_dir / "result.json").unlink(missing_ok=True)

    _validate(manifest, config, settings.prices.training)
    rc = _train(config_path, local.processes(ftj), Path(config.progress.path or ""))
    if rc == 130:
        click.echo("Interrupted: a checkpoint was saved. Run the same command again to resume.", err=True)
        sys.exit(130)
    _report(job_dir, rc, settings.prices.training)


def _parse_job(manifest: Path) -> Any:
    """The manifest's FineTuneJob, with a stable uid: the same manifest resumes the same job and keeps
    its model name."""
    doc = first_document(manifest, "FineTuneJob")
    namespace = (doc.get("metadata") or {}).get("namespace") or "local"
    key = f"{namespace}/{(doc.get('metadata') or {}).get('name')}"
    return parse_manifest(manifest, doc, namespace, str(uuid.UUID(hashlib.sha256(key.encode()).hexdigest()[:32])))


def _validate(manifest: Path, config: Any, price: float) -> None:
    """The ValidatingFiles step, printed; exits 4 when the data is not trainable."""
    from hone_trainer import models
    from hone_trainer.training.formatting import TemplateError
    from hone_trainer.training.validate import validate as run_validation

    click.echo(f"Validating {config.training_data.location} with the tokenizer of {config.base_model.location}")
    try:
        tokenizer = models.load_tokenizer(models.resolve(config.base_model),
                                          trust_remote_code=config.base_model.trust_remote_code)
        result = run_validation(config, tokenizer)
    except (models.ModelError, TemplateError) as exc:
        fail(f"{manifest}: spec.baseModel.uri: {exc}", 5)
    print_validation(Path(config.training_data.location), result, price)
    if not result.ok:
        sys.exit(4)


def _train(config_path: Path, nproc: int, progress_path: Path) -> int:
    """The trainer under a live progress bar; returns its exit code."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from hone_operator import local
    from hone_trainer import contract

    columns = [TextColumn("[bold]training[/bold]"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"), TimeRemainingColumn()]
    with Progress(*columns) as bar:
        task = bar.add_task("train", total=None, loss="-", tps="-")

        def show(p: contract.Progress) -> None:
            bar.update(task, completed=p.step, total=p.total_steps or None,
                       loss=f"{p.train_loss:.4f}" if p.train_loss is not None else "-",
                       tps=f"{p.tokens_per_second:,.0f}" if p.tokens_per_second else "-")

        return local.train(config_path, nproc, progress_path, show)


def _report(job_dir: Path, rc: int, price: float) -> None:
    """The published result, or why training failed (the trainer's message, else its log's tail)."""
    from hone_trainer import contract

    result_file = job_dir / "result.json"
    trained = contract.parse_result(result_file.read_text() if result_file.exists() else None,
                                    contract.TrainingResult)
    if rc != 0 or not isinstance(trained, contract.TrainingResult) or not trained.ok:
        reason = trained.message if isinstance(trained, contract.TrainingResult) and trained.message else \
            "\n".join((job_dir / "trainer.log").read_text(errors="replace").splitlines()[-15:])
        fail(f"training failed (exit code {rc}): {reason}\nfull log: {job_dir / 'trainer.log'}", rc or 1)
    click.echo(f"Succeeded\n  fineTunedModel: {trained.fine_tuned_model}\n  artifact:       {trained.artifact_uri}"
               f"\n  trainedTokens:  {trained.trained_tokens:,}"
               f"\n  cost:           ${contract.cost_usd(trained.trained_tokens, price):.4f}"
               f"\n  trainLoss:      {trained.train_loss:.4f}" + (
                   f"\n  validationLoss: {trained.initial_validation_loss:.4f} before, "
                   f"{trained.validation_loss:.4f} after fine-tuning"
                   if trained.validation_loss is not None and trained.initial_validation_loss is not None else ""))
