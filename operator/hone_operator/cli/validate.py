"""``hone validate``: the ValidatingFiles step on this machine, and how its result is printed.

Given a FineTuneJob manifest it validates exactly what ``hone run`` (and the cluster) will
train: the manifest's base model, files and hyperparameters, so both print the same
estimate. Given a JSONL file it takes the model and hyperparameters from its options.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from hone_operator.cli.common import DEFAULT_MODEL, fail, local_config, local_job, require_runtime

@click.command()
@click.argument("source", metavar="DATA.jsonl|FINETUNEJOB.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--validation", type=click.Path(dir_okay=False, path_type=Path), help="Held-out validation JSONL.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Base model whose tokenizer and chat template count the tokens: a Hugging Face id, "
                   "a local directory, a .gguf file or embedded://smollm2-135m-instruct.")
@click.option("--epochs", default="auto", show_default=True, help="Epochs for the estimate (a number or auto).")
@click.option("--batch-size", default="auto", show_default=True, help="Batch size (a number or auto).")
@click.option("--learning-rate-multiplier", default="auto", show_default=True,
              help="Learning-rate multiplier (a number or auto).")
@click.option("--max-seq-length", default=2048, show_default=True, help="Longest example, in tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as the operator stores it in status.")
def validate(source: Path, as_json: bool, **options: Any) -> None:
    """Check chat JSONL data and count its tokens, like the ValidatingFiles step.

    SOURCE is a JSONL file (then the options say which model and hyperparameters to
    estimate with) or a FineTuneJob manifest (then its spec does, exactly as `hone run`
    and the operator read it). Every problem is reported with its file and line; token
    counts use the base model's own tokenizer and chat template, exactly as training
    does. Exits 4 when the data is not trainable.
    """
    require_runtime("validate", "hone_trainer.training.validate")
    from hone_operator.reconcile.finetunejob import dataset_status, estimate_status
    from hone_operator.settings import load

    settings = load()
    if not source.exists():
        fail(f"{source}: no such file")
    if source.suffix in (".yaml", ".yml"):
        ctx = click.get_current_context()
        given = [f"--{k.replace('_', '-')}" for k in options
                 if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT]
        if given:
            fail(f"{source} is a manifest: its spec sets the model, files and hyperparameters; "
                 f"drop {', '.join(given)} (or validate the JSONL file itself)")
        spec = local_job(source).spec
        config, param = _manifest_config(source, settings), "spec.baseModel.uri"
    else:
        spec = _jsonl_spec(options["model"], options["max_seq_length"])
        config, param = _jsonl_config(source, settings, **options), "--model"
    result = validate_config(config, f"{param} {config.base_model.location}")
    fit = memory_fit(spec, config, result, settings)
    if as_json:
        status = {"dataset": dataset_status(result)}
        if result.ok:
            status["estimate"] = estimate_status(result, config.prices.training)
            if fit is not None:
                status["estimate"]["memory"] = fit.status
        click.echo(json.dumps(status, indent=2))
    else:
        print_validation(config, result, config.prices.training, fit)
    sys.exit(0 if result.ok else 4)


def memory_fit(spec: Any, config: Any, result: Any, settings: Any) -> Any:
    """The memory estimate as this machine will train ``spec`` (its GPUs, or one process on CPU, within the
    memory it has), or None without the model's shape or trainable data."""
    from hone_operator import local
    from hone_operator.reconcile.finetunejob import dataset_status
    from hone_operator.reconcile.memory import check

    if not result.ok or result.model is None:
        return None
    gpus = local.local_gpus(spec)
    here = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpusPerNode": gpus, "nodes": 1})})
    available = None if gpus else (_available(), "available on this machine")
    return check(here, config, result.model, result.hyperparameters, dataset_status(result), settings, available)


def _available() -> int:
    """This machine's available memory in bytes (what a local run can use)."""
    try:
        with open("/proc/meminfo") as fp:
            for line in fp:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _jsonl_spec(model: str, max_seq_length: int) -> Any:
    """The spec a JSONL file is estimated with: the defaults, with the options' model and length."""
    from hone_operator.api.v1alpha1 import FineTuneJobSpec

    return FineTuneJobSpec.model_validate({
        "baseModel": {"uri": "embedded://smollm2-135m-instruct"}, "trainingData": {"inline": "-"},
        "output": {"uri": "file:///unused"}, "hyperparameters": {"maxSeqLength": max_seq_length}})


def validate_config(config: Any, where: str) -> Any:
    """The ValidatingFiles step for a trainer config, with the base model's own tokenizer; a model
    that cannot be loaded fails with exit code 5, naming ``where`` it came from."""
    from hone_operator import local

    try:
        return local.validate(config)
    except local.ModelUnusable as exc:
        fail(f"{where}: {exc}", 5)


def _manifest_config(manifest: Path, settings: Any) -> Any:
    """The trainer config `hone run` would write for this FineTuneJob (inline data into .hone/validate)."""
    ftj = local_job(manifest)
    return local_config(ftj, manifest, Path(".hone/validate") / ftj.metadata.namespace / ftj.metadata.name,
                        settings)


def _auto_or(value: str, option: str, kind: type) -> Any:
    if value == "auto":
        return "auto"
    try:
        number = kind(value)
    except ValueError:
        number = 0
    if number <= 0:
        fail(f"{option} {value!r}: give a positive {'whole number' if kind is int else 'number'} or auto")
    return number


def _jsonl_config(data: Path, settings: Any, *, validation: Path | None, model: str, epochs: str, batch_size: str,
                  learning_rate_multiplier: str, max_seq_length: int) -> Any:
    from hone_trainer import contract

    if validation is not None and not validation.exists():
        fail(f"{validation}: no such file")
    return contract.TrainerConfig(
        job=contract.JobIdentity(namespace="local", name="validate", uid="local", fine_tuned_model="local"),
        base_model=contract.ModelSource(location=model if "://" in model or not Path(model).exists()
                                        else str(Path(model).resolve())),
        training_data=contract.DataFile(location=str(data)),
        validation_data=contract.DataFile(location=str(validation)) if validation else None,
        epochs=_auto_or(epochs, "--epochs", int), batch_size=_auto_or(batch_size, "--batch-size", int),
        learning_rate_multiplier=_auto_or(learning_rate_multiplier, "--learning-rate-multiplier", float),
        max_seq_length=max_seq_length, prices=settings.prices_for(model),
        output_uri="unused", checkpoint_dir="unused", result_path=None)


def print_validation(config: Any, result: Any, price: float, fit: Any = None) -> None:
    """The counts, problems (each with its file and line) and warnings; the estimate only for trainable data."""
    from rich.console import Console
    from rich.table import Table

    files = {"training": config.training_data.location,
             "validation": config.validation_data.location if config.validation_data else "validation",
             "evaluation": "spec.evaluation"}  # its message names the file and line
    console = Console(soft_wrap=True)  # long problem messages stay whole lines (grep, logs)
    table = Table(title=files["training"], show_header=False, box=None)
    rows = [("examples", result.examples), ("validation examples", result.validation_examples),
            ("tokens per epoch", result.tokens_per_epoch), ("trained tokens per epoch", result.trained_tokens_per_epoch),
            ("longest example", result.max_example_tokens), ("invalid lines", result.invalid_lines)]
    if result.ok and result.hyperparameters:
        hp = result.hyperparameters
        rows += [("epochs / batch size / lr multiplier",
                  f"{hp.epochs} / {hp.batch_size} / {hp.learning_rate_multiplier:g}"),
                 ("billable training tokens", result.billable_training_tokens),
                 ("estimated cost", f"${result.estimated_cost_usd:.2f} at ${price:g} per 1M tokens")]
    for name, value in rows:
        table.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    if fit is not None:
        console.print(f"memory: {fit.message}")
    if fit is not None and fit.fits is False:
        console.print("  [yellow]warning[/yellow]: this run is not expected to fit in this machine's memory")
    for kind, n in sorted(result.problem_counts.items()):
        console.print(f"[red]{n} x {kind}[/red]")
    for p in result.problems:
        where = f"{files[p.file]} line {p.line}" if p.line else files[p.file]
        console.print(f"  [red]{where}[/red]: {p.message}")
    for w in result.warnings:
        console.print(f"  [yellow]warning[/yellow]: {w}")
    if result.ok:
        console.print("[green]trainable[/green]")
    elif result.problems:
        p = result.problems[0]
        more = sum(result.problem_counts.values()) - 1
        where = f"{files[p.file]} line {p.line}" if p.line else files[p.file]
        console.print(f"[red]not trainable[/red]: {where}: {p.message}"
                      + (f" (and {more} more problem(s))" if more > 0 else ""))
    else:
        console.print(f"[red]not trainable[/red]: {result.summary}")
