"""``hone dev-cluster``: the emulated API server in the foreground, for kubectl and helm by hand.

Serves on loopback with the CRDs from ``crds/`` installed, writes an admin kubeconfig to the
given file once it serves (atomically, so a reader never sees half a file, and not before),
and runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from hone_dev.apiserver import ApiServerThread


def serve(kubeconfig: Path, host: str = "127.0.0.1", port: int = 0, announce=print) -> None:
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ApiServerThread(host=host, port=port) as apiserver:
            kubeconfig = kubeconfig.expanduser().resolve()
            kubeconfig.parent.mkdir(parents=True, exist_ok=True)
            partial = kubeconfig.with_name(f".{kubeconfig.name}.{os.getpid()}.tmp")
            apiserver.write_kubeconfig(partial)
            os.chmod(partial, 0o600)
            os.replace(partial, kubeconfig)
            announce(f"Serving the Kubernetes API at {apiserver.url} with the CRDs from crds/ installed.\n"
                     f"Admin kubeconfig: {kubeconfig}\n"
                     f"  export KUBECONFIG={kubeconfig}\n"
                     "Stop with Ctrl-C (or SIGTERM).")
            stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
