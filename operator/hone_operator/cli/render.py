"""``hone render``: the objects the operator would create, from the operator's own builders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from hone_operator.builders import finetunejob as ftj_build
from hone_operator.builders import modelserving as msv_build
from hone_operator.builders.common import SpecError
from hone_operator.builders.served import Waiting, referenced_jobs
from hone_operator.cli.common import documents, fail, parse_manifest
from hone_operator.settings import OperatorSettings, load

#: Rendered objects are not stored anywhere, so their owners' UIDs are this placeholder.
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


@click.command()
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
    settings = load()
    parsed = [(m, parse_manifest(m, doc, namespace, PLACEHOLDER_UID)) for m in manifests for doc in documents(m)]
    jobs = {(o.metadata.namespace, o.metadata.name): o for _, o in parsed if o.kind == "FineTuneJob"}
    objects, notes = [], []
    for manifest, obj in parsed:
        try:
            if obj.kind == "FineTuneJob":
                objects.extend(ftj_build.all_objects(obj, settings))
                notes.append(f"# FineTuneJob {obj.metadata.name}: memory: {_memory(obj, settings)}")
            else:
                objects.extend(msv_build.all_objects(obj, settings, _served_jobs(manifest, obj, jobs, settings)))
        except (SpecError, Waiting) as exc:
            param = getattr(exc, "param", "")
            fail(f"{manifest}: {obj.kind} {obj.metadata.name}: {exc}" if not param or str(exc).startswith(param)
                 else f"{manifest}: {obj.kind} {obj.metadata.name}: {param}: {exc}")
    click.echo(f"# Objects the Hone operator creates for {', '.join(map(str, manifests))} (UIDs are placeholders)")
    for note in notes:
        click.echo(note)
    click.echo(yaml.dump_all(objects, Dumper=_ReviewableDumper, sort_keys=False), nl=False)


def _memory(ftj: Any, settings: OperatorSettings) -> str:
    """An upper bound of a FineTuneJob's memory estimate, from its maxSeqLength and batch size (the data is not
    read: `hone validate` counts it), for a base model this machine has (embedded, a local path or folder) with
    the runtime extra; else a line that says what would give it."""
    from hone_trainer.contract import ModelSource

    uri = ftj.spec.baseModel.uri
    if not (uri.startswith(("embedded://", "file://", "/")) or uri.endswith(".gguf")):
        return f"not estimated here: {uri} is not on this machine (`hone validate` on the manifest reads it)"
    try:
        from hone_trainer import models
    except ImportError:
        return "not estimated here: needs the runtime extra (pip install 'hone[runtime]')"
    from hone_trainer.contract.memory import estimate, plan_for

    try:
        shape = models.model_shape(models.resolve(ModelSource(location=uri.removeprefix("file://"))))
    except models.ModelError as exc:
        return f"not estimated here: {exc}"
    config, _ = ftj_build.resolve(ftj, settings)
    batch = ftj.spec.hyperparameters.batchSize
    resources = ftj.spec.resources
    e = estimate(shape, plan_for(config, {}, None if batch == "auto" else batch, resources.gpusPerNode,
                                 resources.nodes))
    return (f"at most {e.summary()}: a bound from maxSeqLength and batchSize, before the data is counted "
            "(`hone validate` on the manifest gives the estimate the operator checks)")


class _ReviewableDumper(yaml.SafeDumper):
    """Multi-line strings (the trainer config, the server config) as literal blocks, so that a
    GitOps diff shows the line that changed instead of one long escaped line."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_ReviewableDumper.add_representer(str, _str)


def _served_jobs(manifest: Path, msv: Any, jobs: dict[tuple[str | None, str], Any],
                 settings: OperatorSettings) -> dict[str, dict[str, Any]]:
    """The FineTuneJobs a ModelServing serves, each as it will be stored once it has Succeeded.

    The status is written here, not observed: it names the model and the artifact URI that
    the job's own trainer config will publish to, which is all a ModelServing reads of it.
    """
    succeeded = {}
    for param, name in referenced_jobs(msv):
        job = jobs.get((msv.metadata.namespace, name))
        if job is None:
            fail(f"{manifest}: ModelServing {msv.metadata.name} serves FineTuneJob {name!r} ({param}); "
                 "give its manifest too so that its published artifact is known")
        config, _ = ftj_build.resolve(job, settings)
        body = job.model_dump(by_alias=True, exclude_none=True, mode="json")
        body["status"] = {"phase": "Succeeded", "fineTunedModel": {
            "name": ftj_build.fine_tuned_model_name(job), "artifactUri": config.output_uri}}
        succeeded[name] = body
    return succeeded
