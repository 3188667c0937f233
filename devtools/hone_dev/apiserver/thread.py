"""Running the emulator on loopback in a thread of its own, and a kubeconfig for it."""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
from pathlib import Path
from typing import Any, Iterable

import aiohttp.web
import yaml

from hone_dev.apiserver import tls
from hone_dev.apiserver.server import HoneApiServer


class ApiServerThread:
    """Runs a :class:`HoneApiServer` on loopback in a thread of its own.

    Tests and benchmarks talk to it over HTTP with the real Kubernetes client
    (through :attr:`kubeconfig`), exactly like they would to a cluster.
    """

    def __init__(self, crds: Iterable[Path] | None = None, host: str = "127.0.0.1", latency: float = 0.0,
                 port: int = 0, san_addresses: tuple[str, ...] = (), san_names: tuple[str, ...] = ()):
        self._sans = (tuple(san_addresses), tuple(san_names))
        self._crds = list(crds) if crds is not None else None
        self._latency = latency
        self._host = host
        self._port = port or None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: HoneApiServer | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="hone-apiserver", daemon=True)
        self._error: BaseException | None = None
        #: The CA that signed the serving certificate (PEM), for clients outside a kubeconfig.
        self.ca_pem = b""

    def __enter__(self) -> "ApiServerThread":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("emulated API server did not start")
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop and self._stop:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - surfaced in __enter__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.ca_pem, cert_pem, key_pem = tls.make_pair(*self._sans)
        async with HoneApiServer(latency=self._latency) as server:
            if self._crds is None:
                server.install_crds()
            else:
                for path in self._crds:
                    server.install_crd(yaml.safe_load(Path(path).read_text()))
            # Stopping cuts open watches and keep-alive connections at once, as a dying API server does.
            runner = aiohttp.web.ServerRunner(aiohttp.web.Server(server), handle_signals=False, shutdown_timeout=0.5)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, self._host, self._port or 0,
                                       ssl_context=tls.server_context(cert_pem, key_pem))
            await site.start()
            try:
                port = runner.addresses[0][1]
                self.server = server
                self.port = port
                self.url = f"https://{self._host}:{port}"
                self._ready.set()
                await self._stop.wait()
            finally:
                await runner.cleanup()

    def client_ssl(self) -> ssl.SSLContext:
        """An SSL context that trusts this server's CA (for raw HTTP clients such as urllib)."""
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(server, *args)`` on the server's loop (thread-safe access to its state)."""
        async def _call() -> Any:
            return fn(self.server, *args)
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(_call(), self.loop).result(30)

    def call_async(self, fn: Any, *args: Any, timeout: float = 60) -> Any:
        """Await ``fn(*args)`` (a coroutine function) on the server's loop."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(fn(*args), self.loop).result(timeout)

    def write_kubeconfig(self, path: Path, namespace: str = "default", token: str | None = None,
                         user: str = "admin") -> Path:
        """A kubeconfig for the admin (``system:masters``), or for whoever ``token`` authenticates."""
        assert self.server is not None
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulated", "cluster": {
                "server": self.url, "certificate-authority-data": base64.b64encode(self.ca_pem).decode()}}],
            "users": [{"name": user, "user": {"token": token or self.server.tokens.admin}}],
            "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": user,
                                                           "namespace": namespace}}],
            "current-context": "emulated",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    def service_account_kubeconfig(self, path: Path, namespace: str, name: str) -> Path:
        """A kubeconfig with a TokenRequest token of an existing ServiceAccount (what its pod would get)."""
        token = self.call(lambda server: server.service_account_token(namespace, name))
        return self.write_kubeconfig(path, namespace, token=token, user=f"{namespace}-{name}")
