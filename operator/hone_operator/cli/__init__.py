"""The ``hone`` command line: one module a command (or a pair that belong together).

* ``validate``: check and count a chat JSONL file (:mod:`.validate`);
* ``run``: fine-tune a FineTuneJob manifest on this machine (:mod:`.run`);
* ``eval``: graders and the safety suite on a published fine-tune and its base (:mod:`.evaluate`);
* ``serve`` and ``chat``: the built-in server, and a client for it (:mod:`.serve`);
* ``api``: OpenAI's fine-tuning API over Hone (:mod:`.api`);
* ``render``: the objects the operator creates for manifests (:mod:`.render`);
* ``crds``: the generated CustomResourceDefinitions;
* ``operator``: the operator itself (:mod:`hone_operator.startup`);
* ``dev-cluster``: the emulated API server, from a checkout (:mod:`.devcluster`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hone_operator import __version__
from hone_operator.cli import api, devcluster, evaluate, render, run, serve, validate


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


@cli.command()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def operator(verbose: bool) -> None:
    """Run the operator against the current cluster (kubeconfig or in-cluster).

    Namespaces, images, prices and ports come from HONE_* environment variables
    or the YAML file named by HONE_CONFIG_FILE.
    """
    from hone_operator.startup import run_operator

    run_operator(verbose)


for command in (validate.validate, run.run, evaluate.evaluate, serve.serve, serve.chat, api.api, render.render, devcluster.dev_cluster):
    cli.add_command(command)


def main() -> None:
    cli()
