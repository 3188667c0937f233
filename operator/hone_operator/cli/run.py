"""``hone run``: a FineTuneJob manifest fine-tuned on this machine (local mode)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from hone_operator.cli.common import fail, local_config, local_job, require_runtime
from hone_operator.cli.validate import memory_fit, print_validation, validate_config


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

    require_runtime("run", "hone_trainer.training.validate")
    ftj = local_job(manifest)
    settings = load()
    job_dir = workdir / ftj.metadata.namespace / ftj.metadata.name
    config = local_config(ftj, manifest, job_dir, settings)
    (job_dir / "result.json").unlink(missing_ok=True)

    result = _validate(manifest, config, settings, ftj.spec)
    assert result.hyperparameters is not None
    # The trainer runs what validation resolved and counted (the estimate it printed), nothing it resolves again.
    config = config.resolved(result.hyperparameters, result.examples, result.tokens_per_epoch)
    config_path = job_dir / "config.json"
    config_path.write_text(config.model_dump_json(by_alias=True, indent=2))
    rc = _train(config_path, local.processes(ftj), Path(config.progress.path or ""))
    if rc == 130:
        click.echo("Interrupted: a checkpoint was saved. Run the same command again to resume.", err=True)
        sys.exit(130)
    _report(job_dir, rc, config.prices.training)
    if config.evaluation is not None:
        _evaluate(config_path, config.evaluation)


def _evaluate(config_path: Path, evaluation: Any) -> None:
    """The evaluation step after training (graders, safety suite), printed; it does not undo the training."""
    from hone_operator import local
    from hone_operator.cli.evaluate import print_evaluation

    click.echo(f"Evaluating: the base model and the fine-tune answer {local.answered(evaluation)} "
               f"(log: {config_path.parent / 'evaluation.log'})")
    rc, result = local.evaluate(config_path)
    if result is None or not result.ok:
        why = result.message if result is not None and result.message else \
            "\n".join((config_path.parent / "evaluation.log").read_text(errors="replace").splitlines()[-10:])
        fail(f"evaluation failed (exit code {rc}); the fine-tune is published, but unevaluated: {why}", rc or 1)
    print_evaluation(result)


def _validate(manifest: Path, config: Any, settings: Any, spec: Any) -> Any:
    """The ValidatingFiles step and the memory estimate, printed; exits 4 when the data is not trainable."""
    click.echo(f"Validating {config.training_data.location} with the tokenizer of {config.base_model.location}")
    result = validate_config(config, f"{manifest}: spec.baseModel.uri")
    print_validation(config, result, config.prices.training, memory_fit(spec, config, result, settings))
    if not result.ok:
        sys.exit(4)
    return result


def _train(config_path: Path, nproc: int, progress_path: Path) -> int:
    """The trainer under a live progress bar; returns its exit code.

    Until the first step the bar says what the trainer is doing (loading the model,
    measuring the base model's validation loss); tokens/s is the run's average since
    its first reported step, which does not swing with one slow interval.
    """
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from hone_operator import local
    from hone_trainer import contract

    columns = [TextColumn("[bold]training[/bold]"), BarColumn(), TextColumn("{task.fields[steps]}"),
               TextColumn("{task.fields[detail]}"), TimeRemainingColumn()]
    first: list[tuple[float, int]] = []  # (time, trained tokens) of the first report with a step
    with Progress(*columns) as bar:
        task = bar.add_task("train", total=None, steps="",
                            detail="loading the model, then the base model's validation loss (first step next)")

        def show(p: contract.Progress) -> None:
            if not p.total_steps:
                return
            now = time.monotonic()
            if not first:
                first.append((now, p.trained_tokens))
            t0, tokens0 = first[0]
            rate = (p.trained_tokens - tokens0) / (now - t0) if now - t0 > 1 else p.tokens_per_second
            loss = f"{p.train_loss:.4f}" if p.train_loss is not None else "-"
            bar.update(task, completed=p.step, total=p.total_steps, steps=f"step {p.step}/{p.total_steps}",
                       detail=f"loss {loss}  {rate or 0:,.0f} tok/s")

        return local.train(config_path, nproc, progress_path, show)


def _report(job_dir: Path, rc: int, price: float) -> None:
    """The published result, or why training failed (the trainer's message, else its log's tail)."""
    from hone_trainer import contract
    from hone_trainer.contract.memory import format_bytes

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
                   if trained.validation_loss is not None and trained.initial_validation_loss is not None else "")
               + (f"\n  tokenAccuracy:  {100 * trained.initial_validation_accuracy:.1f}% before, "
                  f"{100 * trained.validation_accuracy:.1f}% after (validation tokens predicted exactly)"
                  if trained.validation_accuracy is not None and trained.initial_validation_accuracy is not None
                  else "")
               + (f"\n  peakMemory:     {format_bytes(trained.peak_memory_bytes)} (largest rank)"
                  if trained.peak_memory_bytes else ""))
    _curves(job_dir, Path(trained.artifact_uri or ""), trained.fine_tuned_model or "")


def _curves(job_dir: Path, artifact: Path, model: str) -> None:
    """The loss curves the published manifest holds: in the terminal, and as loss.png beside result.json."""
    from hone_operator.cli import curves

    try:
        losses = json.loads((artifact / "manifest.json").read_text()).get("losses") or {}
    except (OSError, ValueError):
        return
    train, validation = losses.get("trainCurve") or [], losses.get("validationCurve") or []
    if not train and not validation:
        return
    click.echo("Loss curves\n" + curves.terminal_summary(train, validation))
    try:
        png = curves.write_png(job_dir / curves.PNG_NAME, train, validation, model)
    except ImportError:
        click.echo("  (install matplotlib for a PNG of the curves)")
        return
    click.echo(f"  picture: {png.resolve()}")
