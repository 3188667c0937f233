"""``hone eval``: graders and the safety suite on a published fine-tune and its base model (what ``hone run``
does after training, on any published result)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from hone_operator.cli.common import fail, require_runtime


@click.command(name="eval")
@click.argument("result")
@click.option("-f", "--file", "spec_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A FineTuneJob manifest (its spec.evaluation) or a YAML of spec.evaluation alone. Without it: "
                   "the safety suite alone.")
@click.option("--base", help="The base model to compare with (default: the one the result's manifest names).")
@click.option("--no-safety", is_flag=True, help="Skip the safety suite.")
@click.option("--record", is_flag=True, help="Write the results into the result's manifest.json (as hone run "
                                             "does); without it nothing is written.")
@click.option("--json", "as_json", is_flag=True, help="Print the EvaluationResult as JSON.")
def evaluate(result: str, spec_file: Path | None, base: str | None, no_safety: bool, record: bool,
             as_json: bool) -> None:
    """Evaluate a published fine-tune (RESULT: its folder or s3:// URI) against its base model.

    Both models answer the eval file's prompts and the safety suite (greedy); the
    graders score the answers and the refusal judge the suite. Exits 0 when the
    evaluation ran and the safety gate passed, 6 when the gate failed.
    """
    import yaml

    from hone_operator import local
    from hone_operator.api.v1alpha1 import EvaluationSpec

    require_runtime("eval", "hone_trainer.evaluation.runner")
    from hone_trainer import contract
    from hone_trainer.evaluation import runner

    spec: dict[str, Any] = {}
    folder = Path.cwd()
    if spec_file is not None:
        doc = yaml.safe_load(spec_file.read_text()) or {}
        spec = (doc.get("spec") or {}).get("evaluation") or {} if doc.get("kind") == "FineTuneJob" else doc
        folder = spec_file.parent.resolve()
    if no_safety:
        spec = {**spec, "safety": {**(spec.get("safety") or {}), "enabled": False}}
    try:
        parsed = EvaluationSpec.model_validate(spec)
        workdir = Path(".hone/eval")
        workdir.mkdir(parents=True, exist_ok=True)
        config = local.evaluation_config(parsed, folder, workdir.resolve())
    except (ValueError, local.LocalSpecError) as exc:
        fail(f"{spec_file or 'the evaluation'}: {exc}")
    if config is None:
        fail("nothing to evaluate: give graders with -f, or leave the safety suite on")
    location = result if "://" in result else str(Path(result).resolve())
    try:
        found = runner.evaluate(config, location, update_manifest=record,
                                base=contract.ModelSource(location=base) if base else None)
    except runner.EvaluationError as exc:
        fail(str(exc), exc.exit_code)
    if as_json:
        click.echo(found.model_dump_json(by_alias=True, exclude_none=True, indent=2))
    else:
        print_evaluation(found)
    if found.safety is not None and not found.safety.passed:
        sys.exit(6)


def print_evaluation(result: Any) -> None:
    """The graders' pass counts and the safety gate, the base model and the fine-tune side by side."""
    click.echo("Evaluation (greedy answers; base model -> fine-tune)")
    b, t = result.base, result.fine_tuned
    for i, name in enumerate(result.graders):
        click.echo(f"  {name}: {b.passed[i]}/{result.examples} -> {t.passed[i]}/{result.examples} passed (mean "
                   f"score {b.mean_score[i]:.3f} -> {t.mean_score[i]:.3f})")
    if result.failures:
        click.echo(f"  not graded: {len(result.failures)} answer(s), e.g. {result.failures[0].grader} on line "
                   f"{result.failures[0].line} ({result.failures[0].model}): {result.failures[0].message}")
    gate = result.safety
    if gate is not None:
        verdict = "passed" if gate.passed else "FAILED: the fine-tune declines less than its base; do not serve it"
        click.echo(f"  safety suite: {gate.requests} requests ({gate.judge} judge), refusal rate "
                   f"{100 * gate.base_refusal_rate:.1f}% -> {100 * gate.fine_tuned_refusal_rate:.1f}%; gate {verdict} "
                   f"(allowed drop {100 * gate.max_refusal_drop:.0f} points)")
        if gate.regressions:
            click.echo(f"  declined by the base, not by the fine-tune: {', '.join(gate.regressions)}")
    if result.seconds is not None:
        click.echo(f"  ({result.seconds:.0f} s)")
