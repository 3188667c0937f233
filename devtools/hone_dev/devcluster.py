"""``hone dev-cluster``: the emulated API server and a node in the foreground, for kubectl and helm by hand.

Serves on loopback with the CRDs from ``crds/`` installed and, where the machine allows it
(root, iproute2: :func:`hone_dev.node.available`), one node that runs the pods for real
(:mod:`hone_dev.node`); with ``node=False``, or where it cannot, only the API server. Writes an
admin kubeconfig to the given file once it serves (atomically, so a reader never sees half a
file, and not before), and runs until SIGINT or SIGTERM, then stops every pod.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable

from hone_dev.apiserver import ApiServerThread


def serve(kubeconfig: Path, host: str = "127.0.0.1", port: int = 0, announce: Callable[[str], Any] = print,
          node: bool = True, state: Path | None = None) -> None:
    from hone_dev import node as nodes

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    why_not = nodes.available() if node else "not asked for (--no-node)"
    kubeconfig = kubeconfig.expanduser().resolve()
    try:
        with contextlib.ExitStack() as stack:
            if why_not is None:
                cluster = stack.enter_context(nodes.LocalCluster(
                    state or kubeconfig.parent / f".{kubeconfig.name}.node", host=host, port=port))
                apiserver = cluster.apiserver
                what = (f"and one node, {cluster.kubelet.NAME if cluster.kubelet else ''}, that runs pods as "
                        f"processes in namespaces (pods and Services on {cluster.bridge.subnet}, reachable from "
                        "this machine)")
            else:
                apiserver = stack.enter_context(ApiServerThread(host=host, port=port))
                what = f"and no node ({why_not}): nothing runs pods"
            kubeconfig.parent.mkdir(parents=True, exist_ok=True)
            partial = kubeconfig.with_name(f".{kubeconfig.name}.{os.getpid()}.tmp")
            apiserver.write_kubeconfig(partial)
            os.chmod(partial, 0o600)
            os.replace(partial, kubeconfig)
            announce(f"Serving the Kubernetes API at {apiserver.url} with the CRDs from crds/ installed, {what}.\n"
                     f"Admin kubeconfig: {kubeconfig}\n"
                     f"  export KUBECONFIG={kubeconfig}\n"
                     "Stop with Ctrl-C (or SIGTERM).")
            stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
