"""``hone dev-cluster``: an emulated Kubernetes API server for kubectl and helm, from a checkout."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hone_operator.cli.common import fail


def _devtools() -> None:
    """Make ``hone_dev`` importable from the checkout this package runs from (it is not in the wheel)."""
    try:
        import hone_dev  # noqa: F401
        return
    except ImportError:
        pass
    devtools = Path(__file__).resolve().parents[3] / "devtools"
    if not (devtools / "hone_dev" / "__init__.py").exists():
        fail("hone dev-cluster is development tooling: it runs from a source checkout of Hone "
             "(pip install -e '.[operator,test]'), not from the wheel or the images.")
    sys.path.insert(0, str(devtools))


@click.command("dev-cluster")
@click.option("--kubeconfig", "kubeconfig", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Write an admin kubeconfig for the emulated cluster here, once it serves.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port on 127.0.0.1 to serve on; 0 picks a free one.")
@click.option("--node/--no-node", default=True, show_default=True,
              help="Also run one node that runs the pods (needs root); --no-node serves the API only.")
@click.option("--state", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The node's folders (pods, PersistentVolumeClaims); default: beside the kubeconfig.")
def dev_cluster(kubeconfig: Path, port: int, node: bool, state: Path | None) -> None:
    """Serve an emulated Kubernetes API (CRDs from crds/ installed) and a node until Ctrl-C.

    Point kubectl and helm at it with KUBECONFIG=FILE. The node runs pods as processes in
    Linux namespaces from this checkout's installed environment (it stands in for Hone's
    images); without root it is left out and nothing runs pods. Development tooling: it is
    what Hone's own tests run against.
    """
    _devtools()
    try:
        from hone_dev.devcluster import serve
    except ImportError as exc:
        fail(f"hone dev-cluster needs the test extra ({exc.name} is missing): pip install -e '.[operator,test]'")
    serve(kubeconfig, port=port, announce=lambda text: click.echo(text, err=True), node=node, state=state)
