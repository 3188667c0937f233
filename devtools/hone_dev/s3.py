"""An S3-compatible endpoint on loopback (moto), with credentials laid out as a mounted Secret."""

from __future__ import annotations

import contextlib
import urllib.request
from pathlib import Path
from typing import Iterator

from hone_dev.cluster import free_port
from hone_trainer.storage import filesystem

BUCKET = "hone-models"


@contextlib.contextmanager
def moto_s3(tmp_path: Path) -> Iterator[tuple[str, object]]:
    """(credentials folder, fsspec filesystem) for a fresh moto server holding an empty BUCKET."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()

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
