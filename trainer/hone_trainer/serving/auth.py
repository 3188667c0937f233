"""API-key authentication: ``Authorization: Bearer <key>`` against a mounted keys file."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

from hone_trainer.serving.protocol import ApiError

log = logging.getLogger("hone.server")


class ApiKeys:
    """Accepted keys from a mounted file (one per line, # comments); re-read when the file changes."""

    def __init__(self, path: str):
        self.path = Path(path)
        self._mtime: float | None = None
        self._keys: list[bytes] = []
        self._load()

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            if self._mtime is None:
                raise ValueError(f"cannot read the API keys file {self.path}: {exc}") from exc
            return  # a Secret update swaps the file; keep the old keys for that instant
        if mtime == self._mtime:
            return
        lines = [ln.strip() for ln in self.path.read_text().splitlines()]
        keys = [ln.encode() for ln in lines if ln and not ln.startswith("#")]
        if not keys:
            raise ValueError(f"the API keys file {self.path} holds no keys")
        self._keys, self._mtime = keys, mtime

    def check(self, header: str | None) -> None:
        try:
            self._load()
        except ValueError:
            log.warning("API keys file %s became unreadable or empty; keeping the previous keys", self.path)
        scheme, _, token = (header or "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() != "bearer" or not given or not any(hmac.compare_digest(given, k) for k in self._keys):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                           type="invalid_request_error", code="invalid_api_key")
