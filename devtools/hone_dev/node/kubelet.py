"""The node's kubelet (and its scheduler): binds pods to the node and runs them with :mod:`.sandbox`.

Runs on the emulated API server's event loop and reads and writes its store directly (a
kubelet's reads and writes, without the HTTP hop). For each pod bound to the node:

* **scheduling**: ``nodeSelector`` against the node's labels and extended resources (GPUs:
  the node has none) decide; an unschedulable pod stays Pending with ``PodScheduled=False``
  and the scheduler's message. CPU and memory requests are not counted against the node (one
  machine runs the operator, a trainer and a server whose requests add up to more cores than
  CI has); limits are enforced instead (below);
* **images**: only the images of :mod:`.images`; any other is ``ErrImagePull`` then
  ``ImagePullBackOff``, as on a node that cannot pull it;
* **volumes** under ``<state>/pods/<uid>/volumes``: ConfigMap, Secret (with ``items``, modes,
  ``optional``), ``emptyDir`` (``medium: Memory`` a tmpfs with its ``sizeLimit``), ``projected``
  (ServiceAccount token from TokenRequest, ConfigMaps, Secrets, downward API), ``downwardAPI``,
  and ``persistentVolumeClaim``: one host folder per claim under ``<state>/volumes``, shared by
  every pod that mounts it and kept when the claim's pods go (the claim is marked Bound, as a
  local-path provisioner does). A missing ConfigMap, Secret or claim keeps the pod in
  ``ContainerCreating`` until it exists, as ``FailedMount`` does;
* **containers**: init containers in order, then the containers, each one sandbox process:
  the command (``command``/``args`` over the image's entrypoint and cmd, ``$(VAR)`` expanded),
  ``env`` (values, ``fieldRef`` downward API, ``resourceFieldRef``, ConfigMap and Secret keys),
  ``envFrom``, ``KUBERNETES_SERVICE_HOST/PORT``, ``workingDir``, the user and groups
  (``runAsUser``/``runAsGroup``/``fsGroup``/``supplementalGroups``, ``runAsNonRoot`` checked),
  ``/etc/hosts`` with the pod's own name, cluster DNS in ``/etc/resolv.conf``;
* **limits**: a memory cgroup per container (``memory.limit_in_bytes``; an OOM kill is
  ``OOMKilled``) and a CPU quota (``cpu.cfs_quota_us``), where the machine's cgroup v1
  controllers are writable (otherwise none, and :attr:`Kubelet.cgroups` says so);
* **results**: the exit code and ``reason`` (``Completed``, ``Error``, ``OOMKilled``,
  ``StartError``) into ``containerStatuses``, the ``terminationMessagePath`` file (a file of
  its own bound into the container) as the message, or the log's tail with
  ``FallbackToLogsOnError``; restarts per ``restartPolicy`` with the kubelet's back-off (10 s
  doubling to 5 min, ``CrashLoopBackOff`` meanwhile); phase ``Succeeded``/``Failed``;
* **probes**: ``httpGet`` and ``tcpSocket`` readiness, liveness and startup probes against the
  pod IP with their delays, periods, timeouts and thresholds (``exec`` and ``grpc`` probes are
  not run: they fail with a message saying so); readiness is the ``Ready`` condition, a
  failed liveness probe restarts the container;
* **deletion**: SIGTERM, then SIGKILL to everything in the container after the grace period,
  then the pod is deleted with a grace period of 0; its network namespace and folders go
  (claims stay);
* **logs**: each container's output in a file per run, served as ``pods/log``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

from hone_dev import ROOT
from hone_dev.apiserver.kinds import CONFIGMAPS, MERGE, NODES, PODS, PVCS, SECRETS, ApiError, now
from hone_dev.node import network
from hone_dev.node.images import Image

log = logging.getLogger("hone.node")

#: Conditions the kubelet owns; others (DisruptionTarget) are kept as they are.
KUBELET_CONDITIONS = ("PodScheduled", "Initialized", "ContainersReady", "Ready", "PodReadyToStartContainers")
EXTENDED_FREE = ("cpu", "memory", "ephemeral-storage", "pods")
MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")
CPU_CGROUP = Path("/sys/fs/cgroup/cpu")
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0


def quantity(value: Any) -> float:
    """A Kubernetes quantity (``6Gi``, ``500m``, ``2``) as a number."""
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables replaced, ``$$`` an escaped ``$``."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


class MountFailure(Exception):
    """A volume cannot be set up yet (``FailedMount``): the pod waits in ContainerCreating."""


class ConfigFailure(Exception):
    """The container's configuration is wrong (``CreateContainerConfigError``)."""


def field_path(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
              "spec.nodeName": pod["spec"].get("nodeName", ""),
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
              "status.podIP": (pod.get("status") or {}).get("podIP", ""),
              "status.hostIP": (pod.get("status") or {}).get("hostIP", "")}
    if path not in simple:
        raise ConfigFailure(f"unsupported fieldPath {path!r}")
    return simple[path]


class Container:
    """One container's runs: its sandbox process, state, restarts and probes."""

    def __init__(self, worker: "PodWorker", spec: dict[str, Any], init: bool):
        self.worker, self.spec, self.init = worker, spec, init
        self.name = spec["name"]
        self.restarts = 0
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.ready = False
        self.started = False
        self.proc: asyncio.subprocess.Process | None = None
        self.cgroups: list[Path] = []
        self.log_path: Path | None = None
        self.exited = asyncio.Event()
        #: Set when this run's startup probe passed (readiness and liveness probes wait for it).
        self.started_up = asyncio.Event()

    def status(self) -> dict[str, Any]:
        image = self.spec.get("image", "")
        return {"name": self.name, "image": image, "imageID": f"hone-node://{image}" if image in
                self.worker.kubelet.images else "", "ready": self.ready, "started": self.started,
                "restartCount": self.restarts, "state": copy.deepcopy(self.state),
                "lastState": copy.deepcopy(self.last_state),
                **({"containerID": f"hone-node://{self.worker.uid}/{self.name}/{self.restarts}"}
                   if "waiting" not in self.state else {})}


class PodWorker:
    """Runs one pod from binding to deletion."""

    def __init__(self, kubelet: "Kubelet", pod: dict[str, Any]):
        self.kubelet = kubelet
        self.ns, self.name, self.uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]
        self.dir = kubelet.state / "pods" / self.uid
        self.deleting = asyncio.Event()
        self.net: network.PodNetwork | None = None
        self.init_containers = [Container(self, c, True) for c in pod["spec"].get("initContainers", [])]
        self.containers = [Container(self, c, False) for c in pod["spec"]["containers"]]
        self.phase = "Pending"
        self.conditions: dict[str, dict[str, Any]] = {}
        self.pod_ip = ""
        self.task: asyncio.Task[None] | None = None
        self.host_mounts: list[Path] = []

    # ---- API state ----------------------------------------------------------

    def pod(self) -> dict[str, Any] | None:
        pod = self.kubelet.server.store[PODS].get((self.ns, self.name))
        return pod if pod is not None and pod["metadata"]["uid"] == self.uid else None

    def condition(self, kind: str, status: bool, reason: str = "", message: str = "") -> None:
        old = self.conditions.get(kind)
        value = "True" if status else "False"
        if old and old["status"] == value and old.get("reason", "") == reason:
            return
        self.conditions[kind] = {"type": kind, "status": value, "lastProbeTime": None, "lastTransitionTime": now(),
                                 **({"reason": reason} if reason else {}), **({"message": message} if message else {})}

    def publish(self) -> None:
        """Write the pod's status as the kubelet sees it (other conditions, e.g. DisruptionTarget, kept)."""
        pod = self.pod()
        if pod is None:
            return
        current = pod.get("status") or {}
        foreign = [c for c in current.get("conditions") or [] if c.get("type") not in KUBELET_CONDITIONS]
        status = {
            "phase": self.phase,
            "conditions": list(self.conditions.values()) + foreign,
            "hostIP": str(self.kubelet.bridge.gateway), "hostIPs": [{"ip": str(self.kubelet.bridge.gateway)}],
            "startTime": current.get("startTime") or now(),
            "qosClass": current.get("qosClass") or "BestEffort",
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        if self.pod_ip:
            status.update(podIP=self.pod_ip, podIPs=[{"ip": self.pod_ip}])
        if status != {k: current.get(k) for k in status}:
            try:
                self.kubelet.server.write(self.kubelet.server.kinds[PODS], self.ns, self.name, "status",
                                          {"status": status}, MERGE)
            except ApiError as exc:
                log.debug("status of %s/%s: %s", self.ns, self.name, exc.message)

    # ---- lifecycle ----------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            await self._kill_all(0)
            raise
        except Exception:  # noqa: BLE001 - a node bug must not take the node down; the pod says so
            log.exception("pod %s/%s", self.ns, self.name)
            self.phase = "Failed"
            self.publish()
        finally:
            await self._teardown()
        if self.deleting.is_set():
            self.kubelet.finish_deletion(self.ns, self.name, self.uid)

    async def _run(self) -> None:
        pod = self.pod()
        if pod is None:
            return
        self.condition("PodScheduled", True)
        self.condition("Initialized", not self.init_containers)
        self.condition("Ready", False, "ContainersNotReady")
        self.condition("ContainersReady", False, "ContainersNotReady")
        self.publish()
        if not await self._pull_images(pod):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.net = await network.PodNetwork(self.kubelet.bridge, self.kubelet.next_pod_number()).create()
        self.pod_ip = self.net.address
        self.condition("PodReadyToStartContainers", True)
        self.publish()
        if self.kubelet.firewall is not None:  # the pod's rules (and its peers') before anything in it runs
            await self.kubelet.firewall.sync(self.net.netns)
        while True:
            try:
                await self._volumes(self.pod() or pod)
                break
            except MountFailure as exc:
                self.kubelet.event(pod, "FailedMount", str(exc), warning=True)
                if await self._wait_deleting(2.0):
                    return
        policy = pod["spec"].get("restartPolicy", "Always")
        for container in self.init_containers:
            while True:
                code = await self._run_once(container)
                if code == 0:
                    break
                if policy == "Never":
                    self.phase = "Failed"
                    self.publish()
                    return
                if await self._back_off(container):
                    return
            if self.deleting.is_set():
                return
        self.condition("Initialized", True)
        self.publish()
        await asyncio.gather(*(self._keep_running(c, policy) for c in self.containers))
        self.phase = "Succeeded" if all(c.state.get("terminated", {}).get("exitCode") == 0
                                        for c in self.containers) else "Failed"
        self._readiness()
        self.publish()

    async def _wait_deleting(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.deleting.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def _pull_images(self, pod: dict[str, Any]) -> bool:
        missing = [c for c in self.init_containers + self.containers if c.spec.get("image") not in self.kubelet.images]
        if not missing:
            return True
        for c in missing:
            message = (f'Failed to pull image "{c.spec.get("image")}": the node has only '
                       f"{', '.join(sorted(self.kubelet.images))}")
            c.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
            self.kubelet.event(pod, "Failed", message, warning=True)
        self.publish()
        if await self._wait_deleting(2.0):
            return False
        for c in missing:
            c.state = {"waiting": {"reason": "ImagePullBackOff",
                                   "message": f'Back-off pulling image "{c.spec.get("image")}"'}}
        self.publish()
        await self.deleting.wait()
        return False

    async def _keep_running(self, container: Container, policy: str) -> None:
        while True:
            code = await self._run_once(container)
            if self.deleting.is_set() or policy == "Never" or (policy == "OnFailure" and code == 0):
                return
            if await self._back_off(container):
                return

    async def _back_off(self, container: Container) -> bool:
        """Wait the kubelet's restart back-off in CrashLoopBackOff; True when the pod is deleted meanwhile."""
        delay = min(BACKOFF_MAX, self.kubelet.restart_backoff * 2 ** max(0, container.restarts - 1))
        container.last_state = {"terminated": container.state.get("terminated", {})}
        container.state = {"waiting": {"reason": "CrashLoopBackOff", "message":
                                       f"back-off {delay:g}s restarting failed container={container.name} "
                                       f"pod={self.name}_{self.ns}({self.uid})"}}
        self.publish()
        if await self._wait_deleting(delay):
            return True
        container.restarts += 1
        return False

    # ---- one run of a container ---------------------------------------------

    async def _run_once(self, container: Container) -> int:
        pod = self.pod()
        if pod is None or self.deleting.is_set():
            return 137
        try:
            spec_path = self._sandbox_spec(pod, container)
        except ConfigFailure as exc:
            container.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            self.publish()
            self.kubelet.event(pod, "Failed", f"Error: {exc}", warning=True)
            await self._wait_deleting(5.0)
            return 1
        run_dir = spec_path.parent
        container.log_path = run_dir / "log"
        container.exited.clear()
        container.started_up.clear()
        with open(container.log_path, "ab") as out:
            container.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hone_dev.node.sandbox", str(spec_path), stdout=out, stderr=out,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
                env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT / "devtools")})
        container.state = {"running": {"startedAt": now()}}
        container.started = True
        self.phase = "Running" if not container.init else self.phase
        self.publish()
        self.kubelet.event(pod, "Started", f"Started container {container.name}")
        probes = [] if container.init else [asyncio.ensure_future(self._probe(container, kind))
                                            for kind in ("startupProbe", "readinessProbe", "livenessProbe")]
        if not container.init and not container.spec.get("readinessProbe") and not container.spec.get("startupProbe"):
            container.ready = True
            self._readiness()
            self.publish()
        code = await container.proc.wait()
        if code < 0:  # the sandbox itself was killed (SIGKILL after the grace period): as a runtime reports it
            code = 128 - code
        self._kill_everything(container)  # nothing of a container outlives it
        for p in probes:
            p.cancel()
        container.exited.set()
        container.ready = False
        container.started = False
        reason = "Completed" if code == 0 else "Error"
        if code == 128 and b"hone-node: failed to start container process" in container.log_path.read_bytes()[-4096:]:
            reason = "StartError"
        if self._oom_killed(container):
            reason = "OOMKilled"
        terminated = {"exitCode": code, "reason": reason, "startedAt": container.state["running"]["startedAt"],
                      "finishedAt": now(), "containerID": f"hone-node://{self.uid}/{container.name}/{container.restarts}"}
        message = self._termination_message(container, run_dir, code)
        if message:
            terminated["message"] = message
        container.state = {"terminated": terminated}
        self._remove_cgroups(container)
        self._readiness()
        self.publish()
        return code

    def _termination_message(self, container: Container, run_dir: Path, code: int) -> str:
        path = run_dir / "termination-log"
        text = path.read_bytes()[:4096].decode(errors="replace") if path.exists() else ""
        if not text and code != 0 and container.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            assert container.log_path is not None
            lines = container.log_path.read_bytes().decode(errors="replace").splitlines()[-80:]
            text = "\n".join(lines)[-2048:]
        return text

    def _readiness(self) -> None:
        ready = bool(self.containers) and all(c.ready for c in self.containers)
        self.condition("ContainersReady", ready, "" if ready else "ContainersNotReady")
        self.condition("Ready", ready, "" if ready else ("PodCompleted" if self.phase in ("Succeeded", "Failed")
                                                         else "ContainersNotReady"))

    # ---- probes ----------------------------------------------------------------

    async def _probe(self, container: Container, kind: str) -> None:
        probe = container.spec.get(kind)
        if not probe:
            return
        if kind != "startupProbe" and container.spec.get("startupProbe"):
            await container.started_up.wait()
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        period = float(probe.get("periodSeconds", 10))
        failures = successes = 0
        while True:
            ok, message = await self._probe_once(container, probe)
            if ok:
                successes, failures = successes + 1, 0
            else:
                failures, successes = failures + 1, 0
                pod = self.pod()
                if pod is not None:
                    self.kubelet.event(pod, "Unhealthy", f"{kind.removesuffix('Probe').capitalize()} probe failed: "
                                       f"{message}", warning=True)
            if kind == "startupProbe":
                if ok:
                    container.started_up.set()
                    if not container.spec.get("readinessProbe"):
                        container.ready = True
                        self._readiness()
                        self.publish()
                    return
                if failures >= int(probe.get("failureThreshold", 3)):
                    await self._stop_container(container, f"Container {container.name} failed startup probe")
                    return
            elif kind == "readinessProbe":
                want = successes >= int(probe.get("successThreshold", 1)) if ok else (
                    failures < int(probe.get("failureThreshold", 3)) and container.ready)
                if want != container.ready:
                    container.ready = want
                    self._readiness()
                    self.publish()
            elif not ok and failures >= int(probe.get("failureThreshold", 3)):
                await self._stop_container(container, f"Container {container.name} failed liveness probe, "
                                                      "will be restarted")
                return
            await asyncio.sleep(period)

    def _port(self, container: Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in container.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ConfigFailure(f"port {port!r} is not a port of container {container.name}")

    async def _probe_once(self, container: Container, probe: dict[str, Any]) -> tuple[bool, str]:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                port = self._port(container, get["port"])
                reader, writer = await asyncio.wait_for(asyncio.open_connection(self.pod_ip, port), timeout)
                try:
                    headers = "".join(f"{h['name']}: {h['value']}\r\n" for h in get.get("httpHeaders") or [])
                    writer.write(f"GET {get.get('path', '/')} HTTP/1.1\r\nHost: {self.pod_ip}:{port}\r\n"
                                 f"User-Agent: kube-probe/1.32\r\n{headers}Connection: close\r\n\r\n".encode())
                    line = await asyncio.wait_for(reader.readline(), timeout)
                finally:
                    writer.close()
                parts = line.decode(errors="replace").split()
                code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
                return 200 <= code < 400, f"HTTP probe failed with statuscode: {code}"
            if "tcpSocket" in probe:
                port = self._port(container, probe["tcpSocket"]["port"])
                _, writer = await asyncio.wait_for(asyncio.open_connection(self.pod_ip, port), timeout)
                writer.close()
                return True, ""
            return False, "exec and grpc probes are not run by this node (httpGet and tcpSocket are)"
        except (OSError, asyncio.TimeoutError, ConfigFailure) as exc:
            return False, f'Get "http://{self.pod_ip}": {exc or type(exc).__name__}'

    # ---- stopping ----------------------------------------------------------------

    async def _stop_container(self, container: Container, reason: str) -> None:
        pod = self.pod()
        if pod is not None:
            self.kubelet.event(pod, "Killing", reason)
        grace = int((pod or {}).get("spec", {}).get("terminationGracePeriodSeconds", 30))
        await self._kill(container, grace)

    async def _kill(self, container: Container, grace: float) -> None:
        proc = container.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(container.exited.wait(), max(grace, 0.01))
        except asyncio.TimeoutError:
            self._kill_everything(container)
            await container.exited.wait()

    def _kill_everything(self, container: Container) -> None:
        pids: set[int] = set()
        for cgroup in container.cgroups:
            try:
                pids |= {int(p) for p in (cgroup / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        if container.proc is not None:
            try:
                os.killpg(container.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def _kill_all(self, grace: float) -> None:
        await asyncio.gather(*(self._kill(c, grace) for c in self.init_containers + self.containers))

    async def delete(self, grace: float) -> None:
        """The pod was deleted: stop every container within ``grace`` seconds."""
        self.deleting.set()
        pod = self.pod()
        if pod is not None:
            for c in self.init_containers + self.containers:
                if c.proc is not None and c.proc.returncode is None:
                    self.kubelet.event(pod, "Killing", f"Stopping container {c.name}")
        await self._kill_all(grace)

    async def _teardown(self) -> None:
        """The pod's processes are gone: release its address, cgroups and memory-backed volumes.

        Its files (logs, termination messages) stay until the pod is deleted, so ``kubectl logs``
        reads a finished pod, as on a node that keeps exited containers.
        """
        for c in self.init_containers + self.containers:
            self._remove_cgroups(c)
        for mount in reversed(self.host_mounts):
            proc = await asyncio.create_subprocess_exec("umount", "-l", str(mount))
            await proc.wait()
        self.host_mounts = []
        if self.net is not None:
            await self.net.remove()
            self.net = None

    def remove_files(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- cgroups ----------------------------------------------------------------

    def _make_cgroups(self, container: Container, run: int) -> list[str]:
        limits = (container.spec.get("resources") or {}).get("limits") or {}
        made: list[Path] = []
        if self.kubelet.cgroups:
            name = f"{self.kubelet.bridge.name}/{self.uid}-{container.name}-{run}"
            memory = MEMORY_CGROUP / name
            memory.mkdir(parents=True, exist_ok=True)
            if "memory" in limits:
                (memory / "memory.limit_in_bytes").write_text(str(int(quantity(limits["memory"]))))
            made.append(memory)
            if "cpu" in limits and CPU_CGROUP.exists():
                cpu = CPU_CGROUP / name
                cpu.mkdir(parents=True, exist_ok=True)
                (cpu / "cpu.cfs_period_us").write_text("100000")
                (cpu / "cpu.cfs_quota_us").write_text(str(max(1000, int(quantity(limits["cpu"]) * 100000))))
                made.append(cpu)
        container.cgroups = made
        return [str(m) for m in made]

    def _oom_killed(self, container: Container) -> bool:
        for cgroup in container.cgroups:
            control = cgroup / "memory.oom_control"
            if control.exists():
                for line in control.read_text().splitlines():
                    if line.startswith("oom_kill ") and int(line.split()[1]) > 0:
                        return True
        return False

    def _remove_cgroups(self, container: Container) -> None:
        for cgroup in container.cgroups:
            for _ in range(50):
                try:
                    cgroup.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)  # the last process of the cgroup is still exiting
        container.cgroups = []

    # ---- volumes ------------------------------------------------------------------

    def _lookup(self, gvr: tuple[str, str, str], name: str) -> dict[str, Any] | None:
        return self.kubelet.server.store[gvr].get((self.ns, name))

    def _items(self, gvr: tuple[str, str, str], source: dict[str, Any], what: str) -> dict[str, tuple[bytes, int | None]] | None:
        obj = self._lookup(gvr, source["name"])
        if obj is None:
            if source.get("optional"):
                return {}
            raise MountFailure(f'MountVolume.SetUp failed: {what} "{source["name"]}" not found')
        if gvr == SECRETS:
            data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            data.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
        else:
            data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        if not source.get("items"):
            return {k: (v, None) for k, v in data.items()}
        out = {}
        for item in source["items"]:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise MountFailure(f'MountVolume.SetUp failed: {what} "{source["name"]}" has no key "{item["key"]}"')
            out[item["path"]] = (data[item["key"]], item.get("mode"))
        return out

    def _write_files(self, folder: Path, files: dict[str, tuple[bytes, int | None]], default_mode: int,
                     gid: int | None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for rel, (content, mode) in files.items():
            path = (folder / rel).resolve()
            if not path.is_relative_to(folder.resolve()):
                raise MountFailure(f"volume item path {rel!r} leaves the volume")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            os.chmod(path, mode if mode is not None else default_mode)
            if gid is not None:
                os.chown(path, 0, gid)

    async def _volumes(self, pod: dict[str, Any]) -> None:
        spec = pod["spec"]
        fs_group = (spec.get("securityContext") or {}).get("fsGroup")
        root = self.dir / "volumes"
        for volume in spec.get("volumes") or []:
            name, target = volume["name"], root / volume["name"]
            if target.exists() and "emptyDir" in volume:
                continue
            if "configMap" in volume or "secret" in volume:
                source = volume.get("configMap") or volume.get("secret")
                gvr = CONFIGMAPS if "configMap" in volume else SECRETS
                files = self._items(gvr, {**source, "name": source.get("name") or source.get("secretName")},
                                    "configmap" if gvr == CONFIGMAPS else "secret")
                assert files is not None
                shutil.rmtree(target, ignore_errors=True)
                self._write_files(target, files, source.get("defaultMode", 0o644), fs_group)
            elif "projected" in volume:
                files = {}
                for source in volume["projected"].get("sources") or []:
                    files.update(self._projected(pod, source))
                shutil.rmtree(target, ignore_errors=True)
                self._write_files(target, files, volume["projected"].get("defaultMode", 0o644), fs_group)
            elif "downwardAPI" in volume:
                files = self._projected(pod, {"downwardAPI": volume["downwardAPI"]})
                self._write_files(target, files, volume["downwardAPI"].get("defaultMode", 0o644), fs_group)
            elif "emptyDir" in volume:
                target.mkdir(parents=True)
                empty = volume["emptyDir"] or {}
                if empty.get("medium") == "Memory":
                    size = f",size={int(quantity(empty['sizeLimit']))}" if empty.get("sizeLimit") else ""
                    proc = await asyncio.create_subprocess_exec("mount", "-t", "tmpfs", "-o", f"mode=1777{size}",
                                                                "tmpfs", str(target))
                    if await proc.wait():
                        raise MountFailure(f"cannot mount a tmpfs for emptyDir {name}")
                    self.host_mounts.append(target)
                self._own(target, fs_group)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                folder = self.kubelet.claim_folder(self.ns, claim)
                if folder is None:
                    raise MountFailure(f'persistentvolumeclaim "{claim}" not found')
                self._own(folder, fs_group)
            else:
                raise MountFailure(f"volume {name!r}: only configMap, secret, projected, downwardAPI, emptyDir and "
                                   "persistentVolumeClaim volumes are supported by this node")

    @staticmethod
    def _own(folder: Path, gid: int | None) -> None:
        if gid is not None and os.stat(folder).st_gid != gid:
            os.chown(folder, 0, gid)
            os.chmod(folder, 0o2775)
        elif gid is None:
            os.chmod(folder, 0o1777)

    def _projected(self, pod: dict[str, Any], source: dict[str, Any]) -> dict[str, tuple[bytes, int | None]]:
        if "serviceAccountToken" in source:
            token = self.kubelet.server.service_account_token(self.ns, pod["spec"].get("serviceAccountName", "default"))
            return {source["serviceAccountToken"]["path"]: (token.encode(), None)}
        if "configMap" in source:
            return self._items(CONFIGMAPS, source["configMap"], "configmap") or {}
        if "secret" in source:
            return self._items(SECRETS, source["secret"], "secret") or {}
        if "downwardAPI" in source:
            out = {}
            for item in source["downwardAPI"].get("items") or []:
                if "fieldRef" in item:
                    out[item["path"]] = (field_path(pod, item["fieldRef"]["fieldPath"]).encode(), item.get("mode"))
            return out
        raise MountFailure(f"unsupported projected source {sorted(source)}")

    # ---- the sandbox's spec ------------------------------------------------------

    def _env(self, pod: dict[str, Any], container: Container, image: Image) -> dict[str, str]:
        env = dict(image.env)
        spec = container.spec
        for source in spec.get("envFrom") or []:
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            gvr = CONFIGMAPS if "configMapRef" in source else SECRETS
            files = self._items(gvr, {"name": ref["name"], "optional": ref.get("optional")},
                                "configmap" if gvr == CONFIGMAPS else "secret")
            for key, (value, _) in (files or {}).items():
                env[source.get("prefix", "") + key] = value.decode()
        for var in spec.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
                continue
            source = var.get("valueFrom") or {}
            if "fieldRef" in source:
                env[var["name"]] = field_path(pod, source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                ref = source["resourceFieldRef"]
                section, _, resource = ref["resource"].partition(".")
                amount = ((spec.get("resources") or {}).get(section) or {}).get(resource)
                divisor = quantity(ref.get("divisor", "1"))
                env[var["name"]] = str(int(-(-quantity(amount) // divisor))) if amount else "0"
            elif "configMapKeyRef" in source or "secretKeyRef" in source:
                ref = source.get("configMapKeyRef") or source.get("secretKeyRef")
                gvr = CONFIGMAPS if "configMapKeyRef" in source else SECRETS
                try:
                    files = self._items(gvr, {"name": ref["name"], "items": [{"key": ref["key"], "path": "v"}],
                                              "optional": ref.get("optional")}, "configmap" if gvr == CONFIGMAPS else
                                        "secret")
                except MountFailure as exc:
                    raise ConfigFailure(str(exc).removeprefix("MountVolume.SetUp failed: ")) from exc
                if files and "v" in files:
                    env[var["name"]] = files["v"][0].decode()
        api = self.kubelet.api_service
        env.update(KUBERNETES_SERVICE_HOST=api[0], KUBERNETES_SERVICE_PORT=str(api[1]),
                   KUBERNETES_SERVICE_PORT_HTTPS=str(api[1]), KUBERNETES_PORT=f"tcp://{api[0]}:{api[1]}")
        env.setdefault("HOSTNAME", self._hostname(pod))
        return env

    @staticmethod
    def _hostname(pod: dict[str, Any]) -> str:
        return pod["spec"].get("hostname") or pod["metadata"]["name"][:63]

    def _user(self, pod: dict[str, Any], container: Container, image: Image) -> tuple[int, int, list[int]]:
        pod_ctx = pod["spec"].get("securityContext") or {}
        ctx = container.spec.get("securityContext") or {}
        uid = ctx.get("runAsUser", pod_ctx.get("runAsUser", image.user[0]))
        gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup", image.user[1] if "runAsUser" not in ctx and
                                                "runAsUser" not in pod_ctx else 0))
        if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) and uid == 0:
            raise ConfigFailure("container has runAsNonRoot and image will run as root")
        groups = [g for g in [pod_ctx.get("fsGroup"), *(pod_ctx.get("supplementalGroups") or [])] if g is not None]
        return int(uid), int(gid), [int(g) for g in groups]

    def _sandbox_spec(self, pod: dict[str, Any], container: Container) -> Path:
        image = self.kubelet.images[container.spec["image"]]
        spec = container.spec
        env = self._env(pod, container, image)
        if spec.get("command"):
            argv = [expand(a, env) for a in spec["command"]] + [expand(a, env) for a in spec.get("args") or []]
        else:
            argv = list(image.entrypoint) + ([expand(a, env) for a in spec["args"]] if spec.get("args") is not None
                                             else list(image.cmd))
        if not argv:
            raise ConfigFailure("no command specified")
        uid, gid, groups = self._user(pod, container, image)
        run_dir = self.dir / "containers" / container.name / str(container.restarts)
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        termination = run_dir / "termination-log"
        termination.touch()
        os.chown(termination, uid, gid)
        hostname = self._hostname(pod)
        subdomain = pod["spec"].get("subdomain")
        fqdn = f"{hostname}.{subdomain}.{self.ns}.svc.{network.CLUSTER_DOMAIN}" if subdomain else ""
        (run_dir / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                                       f"{self.pod_ip}\t{fqdn + ' ' if fqdn else ''}{hostname}\n")
        (run_dir / "resolv.conf").write_text(network.resolv_conf(self.ns, str(self.kubelet.bridge.gateway)))
        (run_dir / "hostname").write_text(hostname + "\n")
        mounts: list[dict[str, Any]] = []
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        for m in spec.get("volumeMounts") or []:
            volume = volumes.get(m["name"])
            if volume is None:
                raise ConfigFailure(f"volumeMount {m['name']!r} names no volume of the pod")
            if "persistentVolumeClaim" in volume:
                folder = self.kubelet.claim_folder(self.ns, volume["persistentVolumeClaim"]["claimName"])
                assert folder is not None
                source = folder
                read_only = m.get("readOnly", False) or volume["persistentVolumeClaim"].get("readOnly", False)
            else:
                source = self.dir / "volumes" / m["name"]
                read_only = m.get("readOnly", False) or any(k in volume for k in ("configMap", "secret", "projected",
                                                                                  "downwardAPI"))
            if m.get("subPath"):
                source = source / m["subPath"]
                if not source.resolve().is_relative_to((self.dir if "persistentVolumeClaim" not in volume else
                                                        source.parent).resolve()):
                    raise ConfigFailure(f"subPath {m['subPath']!r} leaves the volume")
                source.mkdir(parents=True, exist_ok=True)
            mounts.append({"source": str(source), "target": m["mountPath"], "readOnly": read_only})
        for name in ("hosts", "resolv.conf", "hostname"):
            mounts.append({"source": str(run_dir / name), "target": f"/etc/{name}", "readOnly": True})
        mounts.append({"source": str(termination), "target": spec.get("terminationMessagePath", "/dev/termination-log"),
                       "readOnly": False})
        ctx = spec.get("securityContext") or {}
        sandbox = {
            "netns": self.net.path if self.net else "",
            "scratch": str(run_dir / "rootfs"),
            "hostname": hostname[:63],
            "environment": self.kubelet.environment,
            "traversable": self.kubelet.traversable,
            "expose": self.kubelet.traversable,
            "mask": [str(self.kubelet.state)],
            "mounts": mounts,
            "readOnlyRoot": bool(ctx.get("readOnlyRootFilesystem")),
            "noNewPrivileges": ctx.get("allowPrivilegeEscalation") is False,
            "user": [uid, gid],
            "groups": groups,
            "workingDir": spec.get("workingDir") or image.workdir,
            "argv": argv,
            "env": env,
            "cgroups": self._make_cgroups(container, container.restarts),
        }
        path = run_dir / "sandbox.json"
        path.write_text(json.dumps(sandbox))
        os.chmod(path, 0o600)
        return path

    # ---- logs ------------------------------------------------------------------

    def log_file(self, container: str | None, previous: bool) -> Path:
        names = {c.name: c for c in self.init_containers + self.containers}
        if container is None:
            if len(self.containers) != 1:
                raise ApiError(400, "BadRequest", f"a container name must be specified for pod {self.name}, choose "
                               f"one of: [{' '.join(c.name for c in self.containers)}]")
            container = self.containers[0].name
        if container not in names:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {self.name}")
        c = names[container]
        run = c.restarts - 1 if previous else c.restarts
        path = self.dir / "containers" / container / str(run) / "log"
        if previous and run < 0 or not path.exists():
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{self.name}" is waiting to start: '
                           + (c.state.get("waiting", {}).get("reason") or "ContainerCreating")
                           if not previous else f'previous terminated container "{container}" in pod '
                           f'"{self.name}" not found')
        return path


class Kubelet:
    """The node: schedules pods onto itself and runs them; see the module docstring."""

    NAME = "hone-node"

    def __init__(self, server: Any, state: Path, images: dict[str, Image], bridge: network.Bridge,
                 api_service: tuple[str, int], environment: str, restart_backoff: float = BACKOFF_START):
        self.server = server
        self.state = state
        self.images = images
        self.bridge = bridge
        self.api_service = api_service
        self.environment = environment
        self.restart_backoff = restart_backoff
        self.workers: dict[str, PodWorker] = {}
        #: NetworkPolicy enforcement (:mod:`.policy`), where the node has it.
        self.firewall: Any = None
        self._numbers = 0
        self.traversable = sorted({sys.base_prefix, environment, str(ROOT)})
        self.cgroups = self._cgroups_writable()
        self.labels = {"kubernetes.io/hostname": self.NAME, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "hone-dev"}
        self._task: asyncio.Task[None] | None = None

    def _cgroups_writable(self) -> bool:
        probe = MEMORY_CGROUP / self.bridge.name
        try:
            probe.mkdir(exist_ok=True)
            return True
        except OSError:
            log.warning("memory cgroups are not writable here: the node enforces no memory or CPU limits")
            return False

    def next_pod_number(self) -> int:
        self._numbers += 1
        return self._numbers

    # ---- API objects ------------------------------------------------------------

    def register(self) -> None:
        cpus = os.cpu_count() or 1
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        capacity = {"cpu": str(cpus), "memory": f"{memory // 1024}Ki", "pods": "110", "ephemeral-storage": "0"}
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.NAME, "labels": self.labels},
                "spec": {}}
        kind = self.server.kinds[NODES]
        if (None, self.NAME) not in self.server.store[NODES]:
            self.server.create(kind, None, node)
        self.server.write(kind, None, self.NAME, "status", {"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "hone-node is posting ready status", "lastHeartbeatTime": now(),
                            "lastTransitionTime": now()}],
            "addresses": [{"type": "InternalIP", "address": str(self.bridge.gateway)},
                          {"type": "Hostname", "address": self.NAME}],
            "nodeInfo": {"kubeletVersion": "v1.32.0", "containerRuntimeVersion": "hone-node://namespaces",
                         "operatingSystem": "linux", "architecture": "amd64", "osImage": "the host",
                         "kernelVersion": os.uname().release, "machineID": "", "systemUUID": "", "bootID": "",
                         "kubeProxyVersion": "v1.32.0"},
        }}, MERGE)

    def event(self, obj: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
        emit_event(self.server, obj, reason, message, "kubelet", warning)

    def claim_folder(self, ns: str, claim: str) -> Path | None:
        pvc = self.server.store[PVCS].get((ns, claim))
        if pvc is None:
            return None
        folder = self.state / "volumes" / ns / claim
        folder.mkdir(parents=True, exist_ok=True)
        if (pvc.get("status") or {}).get("phase") != "Bound":
            storage = ((pvc.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", "0")
            self.server.write(self.server.kinds[PVCS], ns, claim, "status", {"status": {
                "phase": "Bound", "accessModes": (pvc.get("spec") or {}).get("accessModes") or ["ReadWriteOnce"],
                "capacity": {"storage": storage}}}, MERGE)
        return folder

    # ---- the pod loop --------------------------------------------------------------

    def start(self) -> None:
        self.register()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        workers = list(self.workers.values())
        for w in workers:
            w.deleting.set()
        await asyncio.gather(*(w.delete(0) for w in workers), return_exceptions=True)
        await asyncio.gather(*(w.task for w in workers if w.task), return_exceptions=True)
        for w in workers:
            w.remove_files()
        shutil.rmtree(MEMORY_CGROUP / self.bridge.name, ignore_errors=True)
        for root in (MEMORY_CGROUP, CPU_CGROUP):
            try:
                (root / self.bridge.name).rmdir()
            except OSError:
                pass

    async def _run(self) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        self.server.watchers[PODS].add(queue)
        try:
            for pod in list(self.server.store[PODS].values()):
                self._sync_safely(pod)
            while True:
                _, item = await queue.get()
                if item["type"] == "DELETED":
                    worker = self.workers.get(item["object"]["metadata"]["uid"])
                    if worker is not None:
                        asyncio.ensure_future(self._forget(worker))
                else:
                    self._sync_safely(item["object"])
        finally:
            self.server.watchers[PODS].discard(queue)

    def _sync_safely(self, pod: dict[str, Any]) -> None:
        """One pod's event never stops the node: a write that races the pod's deletion (404, 409) is
        the next event's to settle, and anything else is logged."""
        try:
            self.sync(pod)
        except ApiError as exc:
            log.debug("pod %s/%s: %s", pod["metadata"].get("namespace"), pod["metadata"].get("name"), exc)
        except Exception:  # noqa: BLE001 - the node goes on with every other pod
            log.exception("pod %s/%s: sync failed", pod["metadata"].get("namespace"), pod["metadata"].get("name"))

    def sync(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        uid = meta["uid"]
        worker = self.workers.get(uid)
        if worker is None:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                if meta.get("deletionTimestamp"):
                    self.finish_deletion(meta["namespace"], meta["name"], uid)
                return
            if not spec.get("nodeName"):
                if meta.get("deletionTimestamp"):
                    # What PodGC does with a terminating pod no node runs: it failed, and goes.
                    self.server.write(self.server.kinds[PODS], meta["namespace"], meta["name"], "status",
                                      {"status": {"phase": "Failed", "conditions": [
                                          *((pod.get("status") or {}).get("conditions") or []),
                                          {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
                                           "message": "PodGC: node no longer exists", "lastTransitionTime": now()}]}},
                                      MERGE)
                    self.finish_deletion(meta["namespace"], meta["name"], uid)
                    return
                self._schedule(pod)
                return  # the binding's MODIFIED event starts it
            if spec.get("nodeName") != self.NAME:
                return
            if meta.get("deletionTimestamp"):
                self.finish_deletion(meta["namespace"], meta["name"], uid)
                return
            worker = self.workers[uid] = PodWorker(self, pod)
            worker.task = asyncio.ensure_future(worker.run())
            return
        if meta.get("deletionTimestamp"):
            if worker.task is not None and worker.task.done():
                self.finish_deletion(meta["namespace"], meta["name"], uid)
            elif not worker.deleting.is_set():
                asyncio.ensure_future(worker.delete(float(meta.get("deletionGracePeriodSeconds", 30))))

    async def _forget(self, worker: PodWorker) -> None:
        """The pod is gone from the API: stop what still runs, then remove its files."""
        if worker.task is not None and not worker.task.done():
            await worker.delete(0)
            await asyncio.gather(worker.task, return_exceptions=True)
        worker.remove_files()
        self.workers.pop(worker.uid, None)

    def _schedule(self, pod: dict[str, Any]) -> bool:
        """Bind the pod to this node, or say why it cannot run here. True when bound."""
        spec = pod["spec"]
        problems = []
        selector = spec.get("nodeSelector") or {}
        if any(self.labels.get(k) != v for k, v in selector.items()):
            problems.append("1 node(s) didn't match Pod's node affinity/selector")
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for resource, amount in ((c.get("resources") or {}).get("limits") or {}).items():
                if resource not in EXTENDED_FREE and not resource.startswith("hugepages-") and quantity(amount) > 0:
                    problems.append(f"1 Insufficient {resource}")
        meta = pod["metadata"]
        pods = self.server.kinds[PODS]
        if problems:
            message = f"0/1 nodes are available: {', '.join(sorted(set(problems)))}."
            current = [c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"]
            if not current or current[0].get("message") != message:
                self.server.write(pods, meta["namespace"], meta["name"], "status", {"status": {
                    "phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                        "reason": "Unschedulable", "message": message,
                                                        "lastTransitionTime": now()}]}}, MERGE)
                emit_event(self.server, pod, "FailedScheduling", message, "default-scheduler", warning=True)
            return False
        self.server.write(pods, meta["namespace"], meta["name"], None, {"spec": {"nodeName": self.NAME}}, MERGE)
        emit_event(self.server, pod, "Scheduled", f"Successfully assigned {meta['namespace']}/{meta['name']} to "
                   f"{self.NAME}", "default-scheduler")
        return True

    def finish_deletion(self, ns: str, name: str, uid: str) -> None:
        pod = self.server.store[PODS].get((ns, name))
        if pod is None or pod["metadata"]["uid"] != uid:
            return
        try:
            self.server.delete(self.server.kinds[PODS], ns, name, {"gracePeriodSeconds": 0})
        except ApiError:
            pass

    # ---- logs -------------------------------------------------------------------

    async def logs(self, ns: str, name: str, query: dict[str, str]) -> AsyncIterator[bytes]:
        pod = self.server.store[PODS].get((ns, name))
        worker = self.workers.get(pod["metadata"]["uid"]) if pod else None
        if worker is None:
            raise ApiError(400, "BadRequest", f'pod "{name}" has no running containers on {self.NAME} '
                           "(its logs go with it when it stops)")
        path = worker.log_file(query.get("container"), query.get("previous") == "true")
        data = path.read_bytes()
        if query.get("tailLines"):
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"]):]) if int(query["tailLines"]) else b""
        yield data
        if query.get("follow") != "true":
            return
        position = path.stat().st_size
        container = next(c for c in worker.init_containers + worker.containers
                         if c.log_path == path or c.name == (query.get("container") or worker.containers[0].name))
        while True:
            done = container.exited.is_set() or worker.task is None or worker.task.done()
            size = path.stat().st_size if path.exists() else position
            if size > position:
                with open(path, "rb") as f:
                    f.seek(position)
                    chunk = f.read(size - position)
                position = size
                yield chunk
            elif done:
                return
            else:
                await asyncio.sleep(0.2)


def emit_event(server: Any, obj: dict[str, Any], reason: str, message: str, component: str,
               warning: bool = False) -> None:
    """A core/v1 Event about ``obj`` (what ``kubectl describe`` and ``kubectl get events`` show)."""
    meta = obj["metadata"]
    ns = meta.get("namespace") or "default"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S%f")
    event = {"apiVersion": "v1", "kind": "Event",
             "metadata": {"name": f"{meta['name']}.{stamp}", "namespace": ns},
             "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                                "namespace": ns, "uid": meta.get("uid")},
             "reason": reason, "message": message, "type": "Warning" if warning else "Normal",
             "source": {"component": component}, "firstTimestamp": now(), "lastTimestamp": now(), "count": 1,
             "reportingComponent": component}
    try:
        server.create(server.kinds[("", "v1", "events")], ns, event)
    except ApiError:
        pass

