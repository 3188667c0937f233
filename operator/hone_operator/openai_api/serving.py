"""Models on demand for ``hone api --local``: the built-in server, started for the model a request names.

One server runs at a time (a laptop's memory): it serves a base model of the
catalog and every fine-tune of the calling project trained on that base, so
requests that switch between the base and its fine-tunes do not restart it.
A request for a model the running server lacks (another base, a fine-tune
that succeeded since, another project) stops it and starts the right one;
meanwhile requests wait for it to be ready.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hone_operator.openai_api.errors import ApiError

log = logging.getLogger("hone.api")

#: How long a request waits for a model to load before it gets a 503.
READY_TIMEOUT = 600.0


@dataclass(frozen=True)
class Target:
    """What one server process serves: a base model (under its catalog name) and adapters by name."""

    project: str
    base_name: str
    base_uri: str
    adapters: tuple[tuple[str, str], ...]  # (fine-tuned model name, published folder)


class ServerPool:
    def __init__(self, workdir: Path, settings: Any = None) -> None:
        """``settings`` (the operator's): the price table each server meters at, its base model's."""
        self.workdir = workdir
        self.settings = settings
        self._lock = threading.Lock()
        self._target: Target | None = None
        self._proc: subprocess.Popen | None = None
        self._port = 0
        self._ready = False

    def url(self, target: Target) -> str:
        """The base URL of a server that serves ``target``, started (and waited for) if need be."""
        with self._lock:
            if self._target != target or self._proc is None or self._proc.poll() is not None:
                self._start(target)
            proc, port = self._proc, self._port
            assert proc is not None
            if not self._ready:
                self._wait(proc, port)
                self._ready = True
        return f"http://127.0.0.1:{port}"

    def _start(self, target: Target) -> None:
        self.stop()
        cmd = [sys.executable, "-m", "hone_trainer", "serve", "--model", target.base_uri,
               "--served-model-name", target.base_name]
        if self.settings is not None:  # metered at the base model's prices, as `hone serve` and the cluster do
            config = self.workdir / "server-config.json"
            config.parent.mkdir(parents=True, exist_ok=True)
            prices = self.settings.prices_for(target.base_uri)
            config.write_text(json.dumps({"prices": prices.model_dump(by_alias=True)}))
            cmd += ["--config", str(config)]
        for name, path in target.adapters:
            cmd += ["--adapter", f"{name}={path}"]
        log_path = self.workdir / "server.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting the built-in server for %s (+%d fine-tunes)", target.base_name, len(target.adapters))
        # The server inherits the socket bound and listening here: the port is its own from the start, so no
        # other process can take it between choosing and binding, and /ready below reaches this server only.
        with socket.create_server(("127.0.0.1", 0)) as listener, log_path.open("ab") as out:
            port = listener.getsockname()[1]
            self._proc = subprocess.Popen(cmd + ["--listen-fd", str(listener.fileno())], stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, pass_fds=(listener.fileno(),))
        self._target, self._port, self._ready = target, port, False

    def _wait(self, proc: subprocess.Popen, port: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.workdir / "server.log").read_text(errors="replace").splitlines()[-5:]
                raise ApiError(503, "the model server could not start: " + " | ".join(tail), type="server_error",
                               code="model_unavailable")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise ApiError(503, f"the model did not load within {READY_TIMEOUT:.0f} s; try again",
                       type="server_error", code="model_unavailable")

    def stop(self) -> None:
        proc, self._proc, self._target = self._proc, None, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def forward(url: str, path: str, body: bytes, content_type: str) -> tuple[int, dict[str, str], Iterator[bytes]]:
    """POST ``body`` to the server; its status, headers and body as it arrives (a stream passes through)."""
    host_port = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host_port, timeout=READY_TIMEOUT)
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    resp = conn.getresponse()
    headers = {k: v for k, v in resp.getheaders() if k.lower() in ("content-type", "cache-control")}

    def chunks() -> Iterator[bytes]:
        try:
            while True:
                piece = resp.read1(65536)
                if not piece:
                    return
                yield piece
        finally:
            conn.close()

    return resp.status, headers, chunks()
