"""``hone validate``: the ValidatingFiles step on this machine, and how its result is printed."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hone_operator.cli.common import DEFAULT_MODEL, fail, require_runtime


@click.command()
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

    require_runtime("validate")
    from hone_trainer import contract, models
    from hone_trainer.training.formatting import TemplateError
    from hone_trainer.training.validate import validate as run_validation
    from hone_operator.reconcile.finetunejob import dataset_status, estimate_status
    from hone_operator.settings import load

    settings = load()
    for path in (data, validation):
        if path is not None and not path.exists():
            fail(f"{path}: no such file")
    try:
        epochs_value: int | str = "auto" if epochs == "auto" else int(epochs)
    except ValueError:
        fail(f"--epochs {epochs!r}: give a whole number or auto")
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
        fail(f"--model {model}: {exc}", 5)
    if as_json:
        status = {"dataset": dataset_status(result)}
        if result.ok:
            status["estimate"] = estimate_status(result, settings)
        click.echo(jsonlib.dumps(status, indent=2))
    else:
        print_validation(data, result, settings.prices.training)
    sys.exit(0 if result.ok else 4)


def print_validation(data: Path, result, price: float) -> None:
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
