"""Shared fixtures: an emulated API server per test and the real operator against it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from kubernetes import client, config

from hone_operator.kube import Kube
from tests.support.apiserver import ApiServerThread
from tests.support.cluster import OperatorProcess

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "crds" / "samples"

# Converted tokenizers and fetched models are cached here, not in the user's home.
os.environ.setdefault("HONE_CACHE", str(ROOT / ".pytest_cache" / "hone-cache"))


@pytest.fixture
def apiserver() -> Iterator[ApiServerThread]:
    with ApiServerThread() as srv:
        yield srv


@pytest.fixture
def kubeconfig(apiserver: ApiServerThread, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kube(kubeconfig: Path) -> Kube:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return Kube(client.ApiClient(cfg))


@pytest.fixture
def operator(kubeconfig: Path, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(kubeconfig, tmp_path / "operator.log").start()
    try:
        yield proc
    finally:
        proc.stop()


def load_sample(name: str) -> dict:
    return yaml.safe_load((SAMPLES / name).read_text())


BUCKET = "hone-models"


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[tuple[str, object]]:
    """A moto S3 server on loopback and a Secret-style credentials folder for it."""
    from moto.server import ThreadedMotoServer

    from hone_trainer.storage import filesystem
    from tests.support.cluster import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    import urllib.request

    # moto keeps its state per process, across servers: start every test from an empty store.
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"))
    creds = tmp_path / "s3-credentials"
    creds.mkdir()
    for key, value in {"access-key-id": "testing", "secret-access-key": "testing",
                       "endpoint-url": f"http://127.0.0.1:{port}", "region": "eu-west-1"}.items():
        (creds / key).write_text(value + "\n")
    fs, _ = filesystem("s3://x", str(creds))
    fs.mkdir(BUCKET)
    try:
        yield str(creds), fs
    finally:
        server.stop()


