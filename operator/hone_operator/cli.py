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
    asyncio.run(
        kopf.operator(
            clusterwide=not settings.watch_namespaces,
            namespaces=settings.watch_namespaces,
            standalone=True,
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
        )
    )


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
