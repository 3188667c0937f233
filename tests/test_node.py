"""The one-machine node (hone_dev.node): pods run as processes in namespaces, with Kubernetes' semantics.

Plain pods, Jobs and Deployments applied with the real kubectl, their containers run by the
node: mounts at their real paths, identity, downward API, the ServiceAccount token against the
API server, termination messages, exit codes and reasons, probes, logs, cluster DNS and
Service addresses, graceful deletion, memory limits; the Job controller's backoffLimit,
podFailurePolicy, Indexed completion, suspend and deadline; the Deployment's rolling update.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from hone_dev.cluster import wait_for
from hone_dev.node import LocalCluster, available
from hone_dev.repo import tool_bin

pytestmark = [pytest.mark.xdist_group("node"),  # after or before test_cluster_path.py's, on the same worker
              pytest.mark.skipif(available() is not None, reason=f"no node here: {available()}")]

RUNTIME = "ghcr.io/hone-dev/hone-runtime:0.1.0"
SECURE = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
          "capabilities": {"drop": ["ALL"]}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("node"), job_backoff=0.2, restart_backoff=0.5) as c:
        yield c


@pytest.fixture(scope="module")
def kubectl(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("kubectl-home")
    kubeconfig = cluster.write_kubeconfig(home / "kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(home), "KUBECACHEDIR": str(home / "cache")}
    binary = tool_bin("kubectl")

    def run(*args: str, ok: bool = True, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        out = subprocess.run([binary, *args], capture_output=True, text=True, env=env, input=stdin, timeout=timeout)
        if ok:
            assert out.returncode == 0, f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}"
        return out
    return run


def apply(kubectl, ns: str, *objs: dict[str, Any]) -> None:
    kubectl("-n", ns, "apply", "-f", "-", stdin=yaml.safe_dump_all(objs))


def get(kubectl, ns: str, what: str, path: str) -> str:
    return kubectl("-n", ns, "get", what, "-o", f"jsonpath={path}", ok=False).stdout


def pod(name: str, command: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": RUNTIME, "command": ["sh", "-c", command], "securityContext": SECURE,
                 **spec.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **spec.pop("metadata", {})},
            "spec": {"restartPolicy": "Never", "securityContext": {"runAsUser": 10001, "runAsGroup": 10001,
                                                                   "fsGroup": 10001},
                     "containers": [container], **spec}}


def job(name: str, command: str, **spec: Any) -> dict[str, Any]:
    template = pod(name, command, **spec.pop("pod", {}))
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {"metadata": {"labels": {"app": name}}, "spec": template["spec"]}, **spec}}


def wait_phase(kubectl, ns: str, name: str, phases: tuple[str, ...] = ("Succeeded", "Failed"),
               timeout: float = 60) -> str:
    return wait_for(lambda: (p := get(kubectl, ns, f"pod/{name}", "{.status.phase}")) in phases and p,
                    timeout=timeout, what=f"pod {name} in {phases}")


def job_condition(kubectl, ns: str, name: str) -> str:
    return get(kubectl, ns, f"job/{name}",
               '{range .status.conditions[?(@.status=="True")]}{.type}={.reason};{end}')


def test_a_pod_gets_its_volumes_identity_and_token(kubectl, cluster: LocalCluster) -> None:
    kubectl("create", "namespace", "pods")
    kubectl("-n", "pods", "create", "configmap", "settings", "--from-literal=settings.yaml=level: 3",
            "--from-literal=other=unused")
    kubectl("-n", "pods", "create", "secret", "generic", "creds", "--from-literal=key=s3cr3t")
    apply(kubectl, "pods", {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    script = r"""
set -e
echo "user=$(id -u):$(id -g) groups=$(id -G)"
echo "cwd=$(pwd) host=$(hostname) name=$POD_NAME ns=$POD_NS ip=$POD_IP level=$LEVEL greeting=$GREETING"
echo "config=$(cat /etc/hone/settings.yaml) files=$(ls /etc/hone | tr '\n' ,)"
echo "secret=$(cat /etc/creds/key)"
echo "seeded=$(cat /work/seed)"
echo "account=$(ls /var/run/secrets/kubernetes.io/serviceaccount | tr '\n' ,) $(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)"
touch /root-is-writable 2>/dev/null && echo "root=rw" || echo "root=ro"
touch /etc/hone/x 2>/dev/null && echo "config=rw" || echo "config=ro"
echo shared > /data/from-pod
python - <<'EOF'
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}/apis/authentication.k8s.io/v1/selfsubjectreviews"
req = urllib.request.Request(url, data=b'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}',
                             headers={"Authorization": "Bearer " + open(f"{sa}/token").read(),
                                      "Content-Type": "application/json"}, method="POST")
print("whoami=" + json.load(urllib.request.urlopen(req, context=ctx))["status"]["userInfo"]["username"])
EOF
echo '{"result": "done"}' > /dev/termination-log
exit 7
"""
    spec = pod("identity", script, container={
        "workingDir": "/work",
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "settings.yaml"}}},
                {"name": "WHO", "value": "world"}, {"name": "GREETING", "value": "hello $(WHO)"}],
        "volumeMounts": [{"name": "settings", "mountPath": "/etc/hone", "readOnly": True},
                         {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                         {"name": "work", "mountPath": "/work"}, {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "data", "mountPath": "/data"}]},
        initContainers=[{"name": "seed", "image": RUNTIME, "command": ["sh", "-c", "echo from-init > /work/seed"],
                         "securityContext": SECURE, "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
        volumes=[{"name": "settings", "configMap": {"name": "settings",
                                                    "items": [{"key": "settings.yaml", "path": "settings.yaml"}]}},
                 {"name": "creds", "secret": {"secretName": "creds"}},
                 {"name": "work", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                 {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}])
    apply(kubectl, "pods", spec)
    assert wait_phase(kubectl, "pods", "identity") == "Failed"
    logs = kubectl("-n", "pods", "logs", "identity").stdout
    ip = get(kubectl, "pods", "pod/identity", "{.status.podIP}")
    assert "user=10001:10001 groups=10001" in logs
    assert f"cwd=/work host=identity name=identity ns=pods ip={ip} level=level: 3 greeting=hello world" in logs
    assert "config=level: 3 files=settings.yaml," in logs  # only the item asked for
    assert "secret=s3cr3t" in logs and "seeded=from-init" in logs
    assert "account=ca.crt,namespace,token, pods" in logs
    assert "root=ro" in logs and "config=ro" in logs
    assert "whoami=system:serviceaccount:pods:default" in logs
    state = json.loads(get(kubectl, "pods", "pod/identity", "{.status.containerStatuses[0].state.terminated}"))
    assert (state["exitCode"], state["reason"], state["message"]) == (7, "Error", '{"result": "done"}\n')
    assert json.loads(get(kubectl, "pods", "pod/identity", "{.status.initContainerStatuses[0].state.terminated}")
                      )["reason"] == "Completed"
    # The claim is one host folder, kept; nothing the pod mounted leaked onto the host.
    assert (cluster.state / "volumes" / "pods" / "data" / "from-pod").read_text() == "shared\n"
    assert get(kubectl, "pods", "pvc/data", "{.status.phase}") == "Bound"
    assert not Path("/etc/hone/settings.yaml").exists() and not Path("/etc/creds").exists()


def test_job_retries_counts_and_fails_as_kubernetes_does(kubectl) -> None:
    kubectl("create", "namespace", "jobs")
    no_retry = {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In",
                                                                 "values": [3]}},
                          {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    apply(kubectl, "jobs",
          job("config-error", "exit 3", backoffLimit=4, podFailurePolicy=no_retry),
          job("flaky", "exit 1", backoffLimit=1),
          job("done", "echo ok", completions=2, parallelism=1))
    wait_for(lambda: "Failed=" in job_condition(kubectl, "jobs", "config-error"), what="config-error failed")
    assert job_condition(kubectl, "jobs", "config-error") == "FailureTarget=PodFailurePolicy;Failed=PodFailurePolicy;"
    assert "failed with exit code 3 matching FailJob rule at index 0" in get(
        kubectl, "jobs", "job/config-error", '{.status.conditions[?(@.type=="Failed")].message}')
    assert len(kubectl("-n", "jobs", "get", "pods", "-l", "job-name=config-error", "-o", "name").stdout.split()) == 1
    wait_for(lambda: "Failed=" in job_condition(kubectl, "jobs", "flaky"), what="flaky failed")
    assert job_condition(kubectl, "jobs", "flaky") == "FailureTarget=BackoffLimitExceeded;Failed=BackoffLimitExceeded;"
    assert get(kubectl, "jobs", "job/flaky", "{.status.failed}") == "2"
    wait_for(lambda: "Complete=" in job_condition(kubectl, "jobs", "done"), what="done complete")
    assert get(kubectl, "jobs", "job/done", "{.status.succeeded}/{.status.failed}") == "2/0"
    # Finished pods keep their logs until deleted, and are no longer tracked by the Job.
    assert kubectl("-n", "jobs", "logs", "job/done").stdout == "ok\n"
    assert get(kubectl, "jobs", "pods", "{.items[*].metadata.finalizers}") == ""


def test_disrupted_pod_is_not_counted_and_is_replaced(kubectl) -> None:
    kubectl("create", "namespace", "disrupt")
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    # The first pod waits to be evicted; its replacement finds the marker and succeeds.
    apply(kubectl, "disrupt", {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "marks"},
                               "spec": {"accessModes": ["ReadWriteOnce"],
                                        "resources": {"requests": {"storage": "1Gi"}}}},
          job("evicted", "if [ -e /m/started ]; then echo second; exit 0; fi; touch /m/started; "
                         "trap 'echo terminated; exit 143' TERM; echo waiting; while true; do sleep 0.1; done",
              backoffLimit=0, podFailurePolicy=policy,
              pod={"container": {"volumeMounts": [{"name": "m", "mountPath": "/m"}]},
                   "volumes": [{"name": "m", "persistentVolumeClaim": {"claimName": "marks"}}],
                   "terminationGracePeriodSeconds": 5}))
    first = wait_for(lambda: get(kubectl, "disrupt", "pods", "{.items[?(@.status.phase==\"Running\")].metadata.name}"),
                     what="the first pod running")
    wait_for(lambda: kubectl("-n", "disrupt", "logs", first, ok=False).stdout == "waiting\n", what="it waits")
    kubectl("-n", "disrupt", "patch", "pod", first, "--subresource=status", "--type=strategic", "-p", json.dumps(
        {"status": {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                                    "message": "Eviction API: evicting"}]}}))
    kubectl("-n", "disrupt", "delete", "pod", first, "--wait=false")
    wait_for(lambda: "Complete=" in job_condition(kubectl, "disrupt", "evicted"), timeout=60, what="evicted complete")
    assert get(kubectl, "disrupt", "job/evicted", "{.status.succeeded}/{.status.failed}") == "1/0"
    assert kubectl("-n", "disrupt", "logs", "job/evicted").stdout == "second\n"


def test_indexed_job_pods_find_each_other_through_a_headless_service(kubectl) -> None:
    kubectl("create", "namespace", "indexed")
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers"},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"app": "ring"},
                        "ports": [{"name": "p", "port": 7000, "targetPort": 7000}]}}
    # Index 0 serves; index 1 connects to ring-0.peers by name and reads what it says.
    command = ("if [ \"$JOB_COMPLETION_INDEX\" = 0 ]; then python -c \"import socket; s=socket.create_server(('', 7000)); "
               "c,_=s.accept(); c.sendall(socket.gethostname().encode())\"; else python -c \"import socket,time\n"
               "for _ in range(300):\n  try: print('peer', socket.create_connection(('ring-0.peers', 7000), 2).recv(99)"
               ".decode()); break\n  except OSError: time.sleep(0.1)\"; fi")
    apply(kubectl, "indexed", service, job("ring", command, completions=2, parallelism=2, completionMode="Indexed",
                                           pod={"subdomain": "peers"}))
    wait_for(lambda: "Complete=" in job_condition(kubectl, "indexed", "ring"), timeout=60, what="ring complete")
    assert get(kubectl, "indexed", "job/ring", "{.status.completedIndexes}") == "0-1"
    one = get(kubectl, "indexed", "pods", "{.items[?(@.metadata.annotations.batch\\.kubernetes\\.io/"
                                          "job-completion-index==\"1\")].metadata.name}")
    assert kubectl("-n", "indexed", "logs", one).stdout == "peer ring-0\n"


def test_suspend_and_deadline(kubectl) -> None:
    kubectl("create", "namespace", "limits")
    apply(kubectl, "limits", job("paused", "echo never", suspend=True),
          job("slow", "sleep 300", activeDeadlineSeconds=2, pod={"terminationGracePeriodSeconds": 1}))
    wait_for(lambda: "Failed=" in job_condition(kubectl, "limits", "slow"), timeout=30, what="slow failed")
    assert job_condition(kubectl, "limits", "slow") == "FailureTarget=DeadlineExceeded;Failed=DeadlineExceeded;"
    # The deadline's event was processed after the suspended Job's: it still has no pod.
    assert job_condition(kubectl, "limits", "paused") == "Suspended=JobSuspended;"
    assert kubectl("-n", "limits", "get", "pods", "-l", "job-name=paused", "-o", "name").stdout == ""
    kubectl("-n", "limits", "patch", "job", "paused", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_for(lambda: "Complete=" in job_condition(kubectl, "limits", "paused"), timeout=30, what="paused complete")


def _http(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_deployment_rolls_out_behind_its_service(kubectl) -> None:
    kubectl("create", "namespace", "web")
    server = ("import http.server, os\nclass H(http.server.BaseHTTPRequestHandler):\n  def do_GET(self):\n"
              "    self.send_response(200); self.end_headers(); self.wfile.write(os.environ['VERSION'].encode())\n"
              "http.server.ThreadingHTTPServer(('', 8000), H).serve_forever()")

    def deployment(version: str) -> dict[str, Any]:
        template = pod("web", "", container={
            "command": ["python", "-c", server], "env": [{"name": "VERSION", "value": version}],
            "ports": [{"name": "http", "containerPort": 8000}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}})
        template["spec"].update(restartPolicy="Always", terminationGracePeriodSeconds=1)  # PID 1 ignores SIGTERM
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}}, "spec": template["spec"]}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}
    apply(kubectl, "web", deployment("v1"), service)
    kubectl("-n", "web", "rollout", "status", "deployment/web", "--timeout=60s", timeout=90)
    address = get(kubectl, "web", "svc/web", "{.spec.clusterIP}")
    assert _http(f"http://{address}/") == "v1"  # the host reaches the Service address
    apply(kubectl, "web", deployment("v2"))
    kubectl("-n", "web", "rollout", "status", "deployment/web", "--timeout=60s", timeout=90)
    wait_for(lambda: len(kubectl("-n", "web", "get", "pods", "-o", "name").stdout.split()) == 1,
             what="the old pod gone")
    assert _http(f"http://{address}/") == "v2"
    assert len(kubectl("-n", "web", "get", "rs", "-o", "name").stdout.split()) == 2  # history kept
    kubectl("-n", "web", "scale", "deployment/web", "--replicas=2")
    kubectl("-n", "web", "rollout", "status", "deployment/web", "--timeout=60s", timeout=90)
    assert get(kubectl, "web", "deployment/web", "{.status.readyReplicas}") == "2"


def test_bad_pods_say_why(kubectl) -> None:
    kubectl("create", "namespace", "bad")
    hungry = "python -c \"x = b'x' * (400 * 2**20); print('survived')\""
    apply(kubectl, "bad",
          pod("elsewhere", "true", container={"image": "docker.io/library/busybox:latest"}),
          pod("gpu", "true", container={"resources": {"limits": {"nvidia.com/gpu": "1"}}}),
          pod("hungry", hungry, container={"resources": {"limits": {"memory": "128Mi"}}}),
          pod("never-ready", "sleep 300", container={"readinessProbe": {"tcpSocket": {"port": 9}, "periodSeconds": 1,
                                                                         "failureThreshold": 1}}))
    wait_for(lambda: "ImagePullBackOff" in kubectl("-n", "bad", "get", "pod", "elsewhere").stdout, what="backoff")
    assert get(kubectl, "bad", "pod/elsewhere", "{.status.containerStatuses[0].state.waiting.message}") == \
        'Back-off pulling image "docker.io/library/busybox:latest"'
    events = kubectl("-n", "bad", "get", "events", "-o", "jsonpath={.items[*].message}").stdout
    assert 'Failed to pull image "docker.io/library/busybox:latest": the node has only' in events
    assert "0/1 nodes are available: 1 Insufficient nvidia.com/gpu." == wait_for(lambda: get(
        kubectl, "bad", "pod/gpu", '{.status.conditions[?(@.type=="PodScheduled")].message}'), what="unschedulable")
    assert wait_phase(kubectl, "bad", "hungry") == "Failed"
    assert get(kubectl, "bad", "pod/hungry", "{.status.containerStatuses[0].state.terminated.reason}") == "OOMKilled"
    wait_for(lambda: "Readiness probe failed" in kubectl("-n", "bad", "get", "events", "-o",
                                                         "jsonpath={.items[*].message}").stdout, what="probe event")
    assert get(kubectl, "bad", "pod/never-ready", '{.status.conditions[?(@.type=="Ready")].status}') == "False"
    # A pod that ignores SIGTERM is killed when its grace period ends, then deleted.
    apply(kubectl, "bad", pod("stubborn", "trap '' TERM; echo trapped; while true; do sleep 0.1; done",
                              terminationGracePeriodSeconds=1))
    wait_phase(kubectl, "bad", "stubborn", ("Running",))
    wait_for(lambda: "trapped" in kubectl("-n", "bad", "logs", "stubborn").stdout, what="the trap set")
    started = time.monotonic()
    kubectl("-n", "bad", "delete", "pod", "stubborn", "--wait=false")
    wait_for(lambda: "NotFound" in kubectl("-n", "bad", "get", "pod", "stubborn", ok=False).stderr, what="it went")
    assert 1.0 <= time.monotonic() - started < 15


# Each server pod greets whoever connects with "<its name>:<port>"; a probe pod tries each target in turn and
# prints what happened: the greeting, "refused" (a reset: the pod's own rules, or the peer's), or "closed"
# (the Service proxy found no endpoint whose policies admit the client).
GREETER = ("import os, socket, threading\n"
           "def serve(port):\n"
           "  s = socket.create_server(('', port))\n"
           "  while True:\n"
           "    c, _ = s.accept(); c.sendall(f\"{os.environ['HOSTNAME']}:{port}\".encode()); c.close()\n"
           "for p in os.environ['PORTS'].split()[1:]: threading.Thread(target=serve, args=(int(p),)).start()\n"
           "serve(int(os.environ['PORTS'].split()[0]))\n")
PROBE = ("import json, os, socket\n"
         "for target in os.environ['TARGETS'].split():\n"
         "  host, port = target.rsplit(':', 1)\n"
         "  try:\n"
         "    with socket.create_connection((host, int(port)), timeout=5) as c: got = c.recv(99).decode() or 'closed'\n"
         "  except ConnectionRefusedError: got = 'refused'\n"
         "  except ConnectionResetError: got = 'closed'\n"
         "  except OSError as e: got = type(e).__name__\n"
         "  print(json.dumps([target, got]))\n")


def _greeter(name: str, labels: dict[str, str], ports: list[int], named: dict[str, int]) -> dict[str, Any]:
    return pod(name, "", metadata={"labels": labels}, container={
        "command": ["python", "-c", GREETER], "env": [{"name": "PORTS", "value": " ".join(map(str, ports))}],
        "ports": [{"name": k, "containerPort": v} for k, v in named.items()],
        "readinessProbe": {"tcpSocket": {"port": ports[0]}, "periodSeconds": 1}})


def _probe(kubectl, ns: str, name: str, labels: dict[str, str], targets: list[str]) -> dict[str, str]:
    apply(kubectl, ns, pod(name, "", metadata={"labels": labels}, container={
        "command": ["python", "-c", PROBE], "env": [{"name": "TARGETS", "value": " ".join(targets)}]}))
    assert wait_phase(kubectl, ns, name) == "Succeeded", kubectl("-n", ns, "logs", name, ok=False).stdout
    return dict(json.loads(line) for line in kubectl("-n", ns, "logs", name).stdout.splitlines())


def test_network_policies_are_enforced_in_each_pods_network_namespace(kubectl, cluster: LocalCluster) -> None:
    if cluster.firewall is None:
        pytest.skip("no iptables-restore here: run bash .ci/tools.sh")
    for ns in ("fenced", "elsewhere"):
        kubectl("create", "namespace", ns)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
               "spec": {"selector": {"app": "db"}, "ports": [{"port": 80, "targetPort": "pg"}]}}
    apply(kubectl, "fenced", service, _greeter("db", {"app": "db"}, [5432, 6000], {"pg": 5432}))
    apply(kubectl, "elsewhere", {**service, "metadata": {"name": "outsider"}, "spec": {
        "selector": {"app": "outsider"}, "ports": [{"port": 80, "targetPort": 8000}]}},
        _greeter("outsider", {"app": "outsider"}, [8000], {}))
    # The db admits clients on its named port only; clients reach the db's port and DNS, nothing else.
    dns = {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
           "ports": [{"port": 53, "protocol": "UDP"}]}
    policies = [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "db"},
         "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                  "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                      {"key": "role", "operator": "In", "values": ["client"]}]}}], "ports": [{"port": "pg"}]}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "clients"},
         "spec": {"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
                  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                              "ports": [{"port": 5000, "endPort": 5500}]}, dns]}}]
    apply(kubectl, "fenced", *policies)
    for ns, name in (("fenced", "db"), ("elsewhere", "outsider")):
        kubectl("-n", ns, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=60s", timeout=90)
    db_ip = get(kubectl, "fenced", "pod/db", "{.status.podIP}")
    outsider_ip = get(kubectl, "elsewhere", "pod/outsider", "{.status.podIP}")
    targets = ["db:80", f"{db_ip}:5432", f"{db_ip}:6000", "outsider.elsewhere:80", f"{outsider_ip}:8000"]

    assert _probe(kubectl, "fenced", "client", {"role": "client"}, targets) == {
        "db:80": "db:5432", f"{db_ip}:5432": "db:5432",  # through the Service (by name) and directly
        f"{db_ip}:6000": "refused",  # a port its egress does not list
        "outsider.elsewhere:80": "refused", f"{outsider_ip}:8000": "refused"}  # another namespace
    # A pod that no egress policy selects reaches the other namespace, and the db refuses it (through the
    # Service, the proxy finds no endpoint that admits it and closes the connection).
    assert _probe(kubectl, "fenced", "stranger", {"role": "stranger"}, targets) == {
        "db:80": "closed", f"{db_ip}:5432": "refused", f"{db_ip}:6000": "refused",
        "outsider.elsewhere:80": "outsider:8000", f"{outsider_ip}:8000": "outsider:8000"}
    # The host (the node) reaches every pod, and a changed policy applies to running pods at once.
    assert socket_greeting(db_ip, 6000) == "db:6000"
    kubectl("-n", "elsewhere", "label", "namespace", "elsewhere", "team=partner")
    kubectl("-n", "fenced", "patch", "networkpolicy", "clients", "--type=json", "-p", json.dumps([
        {"op": "add", "path": "/spec/egress/-", "value": {"to": [{"namespaceSelector": {"matchLabels": {
            "team": "partner"}}}]}}]))
    assert _probe(kubectl, "fenced", "client-2", {"role": "client"}, targets[3:]) == {
        "outsider.elsewhere:80": "outsider:8000", f"{outsider_ip}:8000": "outsider:8000"}


def socket_greeting(host: str, port: int) -> str:
    import socket

    with socket.create_connection((host, port), timeout=5) as conn:
        return conn.recv(99).decode()


CONVERSE = """
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
for line in sys.stdin:
    conn.sendall(line.encode())
    try:
        print(conn.recv(99).decode().strip() or "closed", flush=True)
    except socket.timeout:
        print("no answer in 10 s", flush=True)
"""


def test_a_pods_connection_to_the_node_outlives_the_pods_around_it() -> None:
    """A pod that another pod's removal cut off from the node (the API server, every Service) would hang.

    A Linux bridge whose address was not set takes the lowest of its ports' addresses; when that port's pod
    goes, the bridge takes another, and the pods still holding the old one in their ARP cache send the node
    frames that no port owns, lost without a reset until the entry expires (15 to 45 s). Here the other pod's
    port has the lowest address there is, so a bridge that followed its ports would have taken it."""
    import asyncio
    import socket
    import sys
    import threading

    from hone_dev.node import network

    bridge = network.Bridge.create()
    server = socket.create_server((str(bridge.gateway), 0))
    server.settimeout(30)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(99):
                conn.sendall(b"node got " + data)
    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    client = None
    try:
        mac = (Path("/sys/class/net") / bridge.name / "address").read_text().strip()
        pod = asyncio.run(network.PodNetwork(bridge, 1).create())
        other = asyncio.run(network.PodNetwork(bridge, 2).create())
        subprocess.run(["ip", "link", "set", other.veth, "address", "02:00:00:00:00:01"], check=True)
        client = subprocess.Popen(["ip", "netns", "exec", pod.netns, sys.executable, "-c", CONVERSE,
                                   str(bridge.gateway), str(server.getsockname()[1])],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdin and client.stdout
        client.stdin.write("one\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "node got one"
        asyncio.run(other.remove())
        client.stdin.write("two\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "node got two"
        assert (Path("/sys/class/net") / bridge.name / "address").read_text().strip() == mac
    finally:
        if client is not None:
            client.kill()
            client.wait()
        server.close()
        bridge.remove()


def test_a_bridge_index_is_not_taken_while_its_node_is_still_removing_what_it_made() -> None:
    """Another node (another test worker, another cluster) never takes an index whose owner is still removing its
    bridge: it would make its pods' namespaces under names the owner's cleanup then deletes. Here the owner's
    bridge is already gone, as in the middle of its cleanup; a node created then gets another index, and the
    owner's namespace is untouched."""
    from hone_dev.node import network

    owner = network.Bridge.create()
    netns = f"{owner.name}-1"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    others = []
    try:
        subprocess.run(["ip", "link", "del", owner.name], check=True)  # what remove() does first
        others.append(network.Bridge.create())
        assert others[0].index != owner.index
        assert netns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    finally:
        owner.remove()
        for other in others:
            other.remove()
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
