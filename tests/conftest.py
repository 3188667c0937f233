"""Shared fixtures: an emulated API server per test and the real operator against it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from kubernetes import client, config

from hone_dev.apiserver import ApiServerThread
from hone_dev.cluster import OperatorProcess
from hone_dev.s3 import moto_s3
from hone_operator.kube import Kube

ROOT = Path(__file__).resolve().parents[1]

# Converted tokenizers and fetched models are cached here, not in the user's home.
os.environ.setdefault("HONE_CACHE", str(ROOT / ".pytest_cache" / "hone-cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with its tokenizer, saved as a model folder (random weights, no hub)."""
    from hone_dev.tiny import make_tiny_llama, make_tokenizer

    folder = tmp_path_factory.mktemp("tiny") / "model"
    make_tokenizer(folder)
    make_tiny_llama(folder)
    return folder


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
def operator(apiserver: ApiServerThread, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(apiserver, tmp_path / "operator.log").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[tuple[str, object]]:
    """A moto S3 server on loopback and a Secret-style credentials folder for it."""
    with moto_s3(tmp_path) as served:
        yield served
