"""Local paths and remote URIs (s3://, http(s)://) through fsspec.

Credentials come from a mounted Secret directory, one file per key, never
from environment variables set by Hone:

* S3: ``access-key-id``, ``secret-access-key``, optional ``session-token``,
  ``endpoint-url`` (MinIO, Ceph, ...) and ``region``;
* HTTP(S): ``token`` (sent as ``Authorization: Bearer``).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any


def _read(folder: str | None, key: str) -> str | None:
    if not folder:
        return None
    path = Path(folder) / key
    return path.read_text().strip() if path.exists() else None


def filesystem(uri: str, credentials_dir: str | None = None) -> tuple[Any, str]:
    """An fsspec filesystem for ``uri`` and the path inside it."""
    import fsspec

    if uri.startswith("s3://"):
        options: dict[str, Any] = {}
        key, secret = _read(credentials_dir, "access-key-id"), _read(credentials_dir, "secret-access-key")
        if key and secret:
            options.update(key=key, secret=secret, token=_read(credentials_dir, "session-token"))
        client_kwargs = {}
        if endpoint := _read(credentials_dir, "endpoint-url"):
            client_kwargs["endpoint_url"] = endpoint
        if region := _read(credentials_dir, "region"):
            client_kwargs["region_name"] = region
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        return fsspec.filesystem("s3", **options), uri.removeprefix("s3://")
    if uri.startswith(("http://", "https://")):
        headers = {}
        if token := _read(credentials_dir, "token"):
            headers["Authorization"] = f"Bearer {token}"
        return fsspec.filesystem("http", headers=headers), uri
    return fsspec.filesystem("file"), uri.removeprefix("file://")


def open_binary(location: str, credentials_dir: str | None = None) -> IO[bytes]:
    """Open a data file for reading, wherever it is."""
    if "://" not in location or location.startswith("file://"):
        return open(location.removeprefix("file://"), "rb")
    fs, path = filesystem(location, credentials_dir)
    return fs.open(path, "rb")
