"""Local paths and remote URIs (s3://, http(s)://) through fsspec.

Credentials come from a mounted Secret directory, one file per key, never
from environment variables set by Hone:

* S3: ``access-key-id``, ``secret-access-key``, optional ``session-token``,
  ``endpoint-url`` (MinIO, Ceph, ...) and ``region``;
* HTTP(S): ``token`` (sent as ``Authorization: Bearer``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any


def read_secret(folder: str | None, key: str) -> str | None:
    """One key of a Secret mounted as files (``folder/key``), stripped; None if absent."""
    if not folder:
        return None
    path = Path(folder) / key
    return path.read_text().strip() if path.exists() else None


def write_atomically(path: Path, text: str, durable: bool = True) -> None:
    """Replace ``path`` in one step: a reader sees the old content or the new, never half.

    ``durable`` also flushes file and folder to disk, so the write survives a crash of the node.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fp:
        fp.write(text)
        if durable:
            fp.flush()
            os.fsync(fp.fileno())
    os.replace(tmp, path)
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def upload_tree(fs: Any, local: Path, remote: str, skip: str | None = None) -> None:
    """Put every file under ``local`` at the same relative path under ``remote`` (except ``skip``)."""
    for path in sorted(local.rglob("*")):
        if path.is_file() and path.name != skip:
            fs.put_file(str(path), f"{remote}/{path.relative_to(local).as_posix()}")


def filesystem(uri: str, credentials_dir: str | None = None) -> tuple[Any, str]:
    """An fsspec filesystem for ``uri`` and the path inside it."""
    import fsspec

    if uri.startswith("s3://"):
        options: dict[str, Any] = {}
        key, secret = read_secret(credentials_dir, "access-key-id"), read_secret(credentials_dir, "secret-access-key")
        if key and secret:
            options.update(key=key, secret=secret, token=read_secret(credentials_dir, "session-token"))
        client_kwargs = {}
        if endpoint := read_secret(credentials_dir, "endpoint-url"):
            client_kwargs["endpoint_url"] = endpoint
        if region := read_secret(credentials_dir, "region"):
            client_kwargs["region_name"] = region
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        return fsspec.filesystem("s3", **options), uri.removeprefix("s3://")
    if uri.startswith(("http://", "https://")):
        headers = {}
        if token := read_secret(credentials_dir, "token"):
            headers["Authorization"] = f"Bearer {token}"
        return fsspec.filesystem("http", headers=headers), uri
    return fsspec.filesystem("file"), uri.removeprefix("file://")


def open_binary(location: str, credentials_dir: str | None = None) -> IO[bytes]:
    """Open a data file for reading, wherever it is."""
    if "://" not in location or location.startswith("file://"):
        return open(location.removeprefix("file://"), "rb")
    fs, path = filesystem(location, credentials_dir)
    return fs.open(path, "rb")
