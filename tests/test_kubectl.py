"""The real kubectl and helm against the emulated API server: the commands a Hone user types, and what they print.

Each test drives the kubectl binary (1.32 on these machines) through a kubeconfig, exactly as a
user would against a cluster, and checks its output and exit code: protobuf bodies from the typed
commands, discovery without short-name warnings, client-side validation through OpenAPI v3,
server-side Tables with the CRDs' printer columns, client-side apply (three-way strategic merge
for built-ins, JSON merge for custom resources), server-side apply and its conflicts, ``diff``
and server dry runs, ``explain``, ``describe`` with Events, ``get -w``, ``wait``, cascading
deletes, and helm install, upgrade, rollback and uninstall of the chart.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hone_dev import ROOT
from hone_dev.apiserver import ApiServerThread
from hone_dev.cluster import wait_for
from hone_dev.repo import tool_bin

EXAMPLE = ROOT / "examples" / "skateboard-support"


def _kubectl_bin() -> str:
    return tool_bin("kubectl")


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path):
    binary = _kubectl_bin()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBECACHEDIR": str(tmp_path / "kube-cache"),
           "HOME": str(tmp_path)}

    def run(*args: str, ok: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        out = subprocess.run([binary, *args], capture_output=True, text=True, env=env, input=stdin, timeout=60)
        if ok:
            assert out.returncode == 0, f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}"
        return out
    return run


def _rows(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


def test_version_and_discovery_without_warnings(kubectl) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert int(version["serverVersion"]["minor"]) >= 31
    client_minor = int(re.sub(r"\D.*", "", version["clientVersion"]["minor"]))
    out = kubectl("get", "ftj", "-A")
    assert out.stderr.strip() == "No resources found", out.stderr  # no short-name or skew warnings
    if abs(client_minor - int(version["serverVersion"]["minor"])) <= 1:
        assert "skew" not in kubectl("version").stderr
    resources = _rows(kubectl("api-resources", "--api-group", "hone.dev").stdout)
    assert resources[0][:2] == ["NAME", "SHORTNAMES"]
    assert [r[:2] for r in resources[1:]] == [["finetunejobs", "ftj"], ["modelservings", "msv"], ["tokenbudgets", "tb"]]
    assert "finetunejobs" in kubectl("api-resources", "--categories", "hone", "-o", "name").stdout


def test_typed_commands_send_protobuf_and_are_understood(kubectl) -> None:
    assert kubectl("create", "namespace", "team-a").stdout.strip() == "namespace/team-a created"
    assert kubectl("-n", "team-a", "create", "secret", "generic", "hub-token",
                   "--from-literal=token=s3cr3t").stdout.strip() == "secret/hub-token created"
    kubectl("-n", "team-a", "create", "serviceaccount", "trainer")
    kubectl("-n", "team-a", "create", "configmap", "chats", "--from-literal=train.jsonl={}")
    assert kubectl("-n", "team-a", "get", "secret", "hub-token", "-o", "jsonpath={.data.token}").stdout == "czNjcjN0"
    assert _rows(kubectl("get", "namespace", "team-a").stdout)[1][:2] == ["team-a", "Active"]
    rows = _rows(kubectl("-n", "team-a", "get", "secret,configmap").stdout)
    assert ["secret/hub-token", "Opaque", "1"] == rows[1][:3]
    assert ["configmap/chats", "1"] == rows[-1][:2]
    out = kubectl("create", "namespace", "team-a", ok=False)
    assert out.returncode == 1 and 'namespaces "team-a" already exists' in out.stderr


def test_apply_kustomization_then_get_shows_the_printer_columns(kubectl, apiserver: ApiServerThread) -> None:
    kubectl("create", "namespace", "team-a")
    out = kubectl("-n", "team-a", "apply", "-k", str(EXAMPLE))
    assert out.stdout.splitlines() == [
        "configmap/skateboard-support-data created", "persistentvolumeclaim/hone-models created",
        "finetunejob.hone.dev/skateboard-support created", "modelserving.hone.dev/skateboard-support created"]
    rows = _rows(kubectl("-n", "team-a", "get", "ftj").stdout)
    assert rows[0] == ["NAME", "PHASE", "PROGRESS", "TOKENS", "LOSS", "AGE"]

    def running(server) -> None:  # the operator's status, written as it writes it
        kind = server.kinds[("hone.dev", "v1alpha1", "finetunejobs")]
        server.write(kind, "team-a", "skateboard-support", "status", {"status": {
            "phase": "Running", "progress": {"percent": 50, "trainedTokens": 12345, "trainLoss": 1.25},
            "fineTunedModel": {"name": "ft:smollm2:ollie:abc"}}}, "application/merge-patch+json")
    apiserver.call(running)
    rows = _rows(kubectl("-n", "team-a", "get", "ftj").stdout)
    assert rows[1][:5] == ["skateboard-support", "Running", "50", "12345", "1.25"]
    wide = _rows(kubectl("-n", "team-a", "get", "ftj", "-o", "wide").stdout)
    assert wide[0][-3:] == ["MODEL", "BASE", "AGE"]
    assert wide[1][5:7] == ["ft:smollm2:ollie:abc", "embedded://smollm2-135m-instruct"]
    assert _rows(kubectl("-n", "team-a", "get", "msv").stdout)[0][:3] == ["NAME", "PHASE", "READY"]
    # -o yaml and jsonpath read the stored object, not the table.
    obj = yaml.safe_load(kubectl("-n", "team-a", "get", "ftj", "skateboard-support", "-o", "yaml").stdout)
    assert obj["status"]["phase"] == "Running" and obj["spec"]["suffix"] == "ollie"
    assert kubectl("-n", "team-a", "get", "ftj", "skateboard-support", "-o",
                   "jsonpath={.status.progress.percent}").stdout == "50"
    kubectl("-n", "team-a", "wait", "--for=jsonpath={.status.phase}=Running", "ftj/skateboard-support",
            "--timeout=10s")
    # A TokenBudget's table: today's usage, what running jobs hold, the limit, free tokens left, the reset.
    kubectl("-n", "team-a", "apply", "-f", str(ROOT / "crds" / "samples" / "tokenbudget.yaml"))

    def used(server) -> None:
        kind = server.kinds[("hone.dev", "v1alpha1", "tokenbudgets")]
        server.write(kind, "team-a", "team-budget", "status", {"status": {
            "training": {"tokensToday": 1200, "reservedTokens": 300, "freeTokensRemainingToday": 998800},
            "inference": {"tokensToday": 4321}, "resetsAt": "2026-12-04T00:00:00Z"}}, "application/merge-patch+json")
    apiserver.call(used)
    rows = _rows(kubectl("-n", "team-a", "get", "tb").stdout)
    assert rows[0] == ["NAME", "USED", "RESERVED", "LIMIT", "FREE", "RESETS", "SERVED", "AGE"]
    assert rows[1][:7] == ["team-budget", "1200", "300", "20000000", "998800", "2026-12-04T00:00:00Z", "4321"]


def test_explain_prints_the_field_docs_from_the_crd(kubectl) -> None:
    out = kubectl("explain", "finetunejob.spec.hyperparameters").stdout
    assert "KIND:       FineTuneJob" in out and "VERSION:    v1alpha1" in out
    assert re.search(r"maxSeqLength\s+<integer>\s+Longest example, in tokens", out)
    assert "ObjectMeta" in kubectl("explain", "modelserving.metadata").stdout
    assert "containers" in kubectl("explain", "deployment.spec.template.spec").stdout
    # The same docs from /openapi/v2 (gnostic protobuf), what older clients read.
    out = kubectl("explain", "finetunejob.spec.hyperparameters", "--output=plaintext-openapiv2").stdout
    assert "KIND:     FineTuneJob" in out and re.search(r"maxSeqLength\s+<integer>\s+Longest example, in tokens", out)
    assert "Number of desired pods" in kubectl("explain", "deployment.spec.replicas",
                                               "--output=plaintext-openapiv2").stdout


def test_apply_refuses_invalid_objects_naming_the_field(kubectl, tmp_path: Path) -> None:
    kubectl("create", "namespace", "team-a")
    sample = yaml.safe_load((ROOT / "crds/samples/finetunejob-minimal.yaml").read_text())
    sample["spec"]["hyperparameters"] = {"maxSeqLength": "lots"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(sample))
    out = kubectl("-n", "team-a", "apply", "-f", str(bad), ok=False)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        'The FineTuneJob "support-assistant" is invalid: spec.hyperparameters.maxSeqLength: Invalid value: '
        '"string": spec.hyperparameters.maxSeqLength in body must be of type integer: "string"')
    sample["spec"]["hyperparameters"] = {"epochz": 3}
    bad.write_text(yaml.safe_dump(sample))
    out = kubectl("-n", "team-a", "apply", "-f", str(bad), ok=False)
    assert out.returncode == 1
    assert 'strict decoding error: unknown field "spec.hyperparameters.epochz"' in out.stderr
    # Nothing was created by either.
    assert kubectl("-n", "team-a", "get", "ftj", "-o", "name").stdout == ""
    # With validation off the unknown field is pruned, as the API server prunes it.
    kubectl("-n", "team-a", "apply", "--validate=false", "-f", str(bad))
    stored = json.loads(kubectl("-n", "team-a", "get", "ftj", "support-assistant", "-o", "json").stdout)
    assert "hyperparameters" not in stored["spec"] or "epochz" not in stored["spec"]["hyperparameters"]


def test_reapply_diff_and_server_dry_run(kubectl, tmp_path: Path) -> None:
    kubectl("create", "namespace", "team-a")
    kubectl("-n", "team-a", "apply", "-k", str(EXAMPLE))
    changed = tmp_path / "example"
    shutil.copytree(EXAMPLE, changed)
    ftj = changed / "finetunejob.yaml"
    ftj.write_text(ftj.read_text().replace("epochs: 6", "epochs: 3").replace("    memory: 6Gi\n", ""))
    diff = kubectl("-n", "team-a", "diff", "-k", str(changed), ok=False)
    assert diff.returncode == 1, diff.stderr  # 1: differences found
    assert "-    epochs: 6\n+    epochs: 3" in diff.stdout and "-    memory: 6Gi" in diff.stdout
    dry = kubectl("-n", "team-a", "apply", "-k", str(changed), "--dry-run=server").stdout
    assert "finetunejob.hone.dev/skateboard-support configured (server dry run)" in dry
    get = ("-n", "team-a", "get", "ftj", "skateboard-support", "-o", "jsonpath={.spec.hyperparameters.epochs} "
           "{.spec.resources.memory} {.metadata.generation}")
    assert kubectl(*get).stdout == "6 6Gi 1"  # neither diff nor the dry run changed anything
    out = kubectl("-n", "team-a", "apply", "-k", str(changed)).stdout
    assert "finetunejob.hone.dev/skateboard-support configured" in out
    assert "modelserving.hone.dev/skateboard-support unchanged" in out
    assert kubectl(*get).stdout == "3  2"  # the field removed from the file is removed from the object
    assert kubectl("-n", "team-a", "diff", "-k", str(changed)).stdout == ""


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: server
        image: registry.example/server:1
        ports: [{containerPort: 8000, name: http}]
        env: [{name: MODE, value: fast}, {name: DEBUG, value: "1"}]
      - name: sidecar
        image: registry.example/sidecar:1
"""


def test_apply_merges_built_in_lists_by_their_keys(kubectl, tmp_path: Path, apiserver: ApiServerThread) -> None:
    kubectl("create", "namespace", "team-a")
    manifest = tmp_path / "deploy.yaml"
    manifest.write_text(DEPLOYMENT)
    kubectl("-n", "team-a", "apply", "-f", str(manifest))

    def add_status_port(server) -> None:  # a field another writer owns: kept by a three-way merge
        kind = server.kinds[("apps", "v1", "deployments")]
        server.write(kind, "team-a", "web", None, {"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "server"}, {"name": "sidecar"}],
            "containers": [{"name": "sidecar", "resources": {"limits": {"cpu": "1"}}}]}}}},
            "application/strategic-merge-patch+json")
    apiserver.call(add_status_port)
    manifest.write_text(DEPLOYMENT.replace("server:1", "server:2").replace(', {name: DEBUG, value: "1"}', ""))
    assert kubectl("-n", "team-a", "apply", "-f", str(manifest)).stdout.strip() == "deployment.apps/web configured"
    spec = json.loads(kubectl("-n", "team-a", "get", "deploy", "web", "-o", "json").stdout)["spec"]["template"]["spec"]
    server, sidecar = spec["containers"]
    assert (server["name"], server["image"], server["env"]) == ("server", "registry.example/server:2",
                                                               [{"name": "MODE", "value": "fast"}])
    assert server["ports"] == [{"containerPort": 8000, "name": "http"}]
    assert sidecar == {"name": "sidecar", "image": "registry.example/sidecar:1", "resources": {"limits": {"cpu": "1"}}}


def test_label_annotate_patch_scale_and_delete(kubectl) -> None:
    kubectl("create", "namespace", "team-a")
    kubectl("-n", "team-a", "apply", "-k", str(EXAMPLE))
    assert kubectl("-n", "team-a", "label", "ftj", "skateboard-support", "team=support").stdout.strip() == \
        "finetunejob.hone.dev/skateboard-support labeled"
    kubectl("-n", "team-a", "annotate", "ftj", "skateboard-support", "hone.dev/owner=ana")
    kubectl("-n", "team-a", "patch", "ftj", "skateboard-support", "--type", "merge", "-p", '{"spec":{"suffix":"bob"}}')
    got = kubectl("-n", "team-a", "get", "ftj", "-l", "team=support", "-o",
                  "jsonpath={.items[0].spec.suffix} {.items[0].metadata.annotations.hone\\.dev/owner}").stdout
    assert got == "bob ana"
    assert kubectl("-n", "team-a", "scale", "msv", "skateboard-support", "--replicas=3").stdout.strip() == \
        "modelserving.hone.dev/skateboard-support scaled"
    assert kubectl("-n", "team-a", "get", "msv", "skateboard-support", "-o", "jsonpath={.spec.replicas}").stdout == "3"
    out = kubectl("-n", "team-a", "patch", "ftj", "skateboard-support", "--type", "merge",
                  "-p", '{"spec":{"method":"magic"}}', ok=False)
    assert out.returncode == 1 and "spec.method: Unsupported value: \"magic\"" in out.stderr
    assert kubectl("-n", "team-a", "delete", "-k", str(EXAMPLE)).stdout.count("deleted") == 4
    assert kubectl("-n", "team-a", "get", "ftj,msv,cm,pvc", "-o", "name").stdout == ""


def test_dev_cluster_command_serves_until_sigterm(tmp_path: Path) -> None:
    binary = _kubectl_bin()
    config = tmp_path / "dev" / "kubeconfig"
    proc = subprocess.Popen([sys.executable, "-m", "hone_operator.cli", "dev-cluster", "--kubeconfig", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                str(ROOT / d) for d in ("operator", "trainer", "devtools"))})
    try:
        wait_for(lambda: config.exists() or proc.poll() is not None, timeout=60, what="the kubeconfig")
        assert proc.poll() is None, proc.stderr.read()
        assert oct(config.stat().st_mode & 0o777) == "0o600"
        env = {**os.environ, "KUBECONFIG": str(config), "HOME": str(tmp_path)}
        out = subprocess.run([binary, "get", "crd", "-o", "name"], capture_output=True, text=True, env=env,
                             timeout=60)
        assert out.stdout.split() == ["customresourcedefinition.apiextensions.k8s.io/finetunejobs.hone.dev",
                                      "customresourcedefinition.apiextensions.k8s.io/modelservings.hone.dev",
                                      "customresourcedefinition.apiextensions.k8s.io/tokenbudgets.hone.dev"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"Admin kubeconfig: {config}" in err


def test_server_side_apply_owns_fields_and_names_conflicts(kubectl, tmp_path: Path) -> None:
    kubectl("create", "namespace", "team-a")
    out = kubectl("-n", "team-a", "apply", "--server-side", "-k", str(EXAMPLE)).stdout
    assert out.count("serverside-applied") == 4
    get = ("-n", "team-a", "get", "ftj", "skateboard-support", "-o")
    managed = json.loads(kubectl(*get, "json", "--show-managed-fields").stdout)["metadata"]["managedFields"]
    assert [(m["manager"], m["operation"]) for m in managed] == [("kubectl", "Apply")]
    assert managed[0]["fieldsV1"]["f:spec"]["f:hyperparameters"] == {
        "f:batchSize": {}, "f:epochs": {}, "f:learningRateMultiplier": {}}

    # Another manager changes two applied fields: the next apply names them and that manager.
    kubectl("-n", "team-a", "patch", "ftj", "skateboard-support", "--type", "merge",
            "-p", '{"spec":{"suffix":"bob","hyperparameters":{"epochs":4}}}')
    changed = tmp_path / "finetunejob.yaml"
    changed.write_text((EXAMPLE / "finetunejob.yaml").read_text().replace("    memory: 6Gi\n", ""))
    out = kubectl("-n", "team-a", "apply", "--server-side", "-f", str(changed), ok=False)
    assert out.returncode == 1
    assert out.stderr.startswith('error: Apply failed with 2 conflicts: conflicts with "kubectl-patch" using '
                                 "hone.dev/v1alpha1:\n- .spec.hyperparameters.epochs\n- .spec.suffix\n"), out.stderr
    assert kubectl(*get, "jsonpath={.spec.suffix} {.spec.resources.memory}").stdout == "bob 6Gi"  # nothing applied

    # --force-conflicts takes the fields over; the field dropped from the file is removed.
    kubectl("-n", "team-a", "apply", "--server-side", "--force-conflicts", "-f", str(changed))
    assert kubectl(*get, "jsonpath={.spec.suffix} {.spec.hyperparameters.epochs} {.spec.resources}").stdout == \
        'ollie 6 {"cpu":"2","gpusPerNode":0}'
    managers = kubectl(*get, "jsonpath={.metadata.managedFields[*].manager}").stdout
    assert managers == "kubectl"  # kubectl-patch owned nothing else, so its entry is gone
    rv = kubectl(*get, "jsonpath={.metadata.resourceVersion}").stdout
    kubectl("-n", "team-a", "apply", "--server-side", "-f", str(changed))
    assert kubectl(*get, "jsonpath={.metadata.resourceVersion}").stdout == rv  # a no-op apply writes nothing

    # A field co-owned by a second applier survives the first one dropping it.
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: hone.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: skateboard-support}\n"
                     "spec: {suffix: ollie}\n")
    kubectl("-n", "team-a", "apply", "--server-side", "--field-manager", "argocd-controller", "-f", str(other))
    changed.write_text(changed.read_text().replace("  suffix: ollie\n", ""))
    kubectl("-n", "team-a", "apply", "--server-side", "-f", str(changed))
    assert kubectl(*get, "jsonpath={.spec.suffix}").stdout == "ollie"


def test_helm_install_upgrade_rollback_uninstall(kubectl, kubeconfig: Path, tmp_path: Path) -> None:
    from hone_dev.repo import helm_bin

    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path),
           "HELM_CACHE_HOME": str(tmp_path / "helm-cache"), "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
           "HELM_DATA_HOME": str(tmp_path / "helm-data")}

    def helm(*args: str) -> str:
        out = subprocess.run([helm_bin(), *args, "-n", "hone-system"], capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.returncode == 0, f"helm {' '.join(args)} failed:\n{out.stderr}"
        return out.stdout

    chart = str(ROOT / "charts" / "hone")
    assert "STATUS: deployed" in helm("install", "hone", chart, "--create-namespace")
    # The CRDs from the chart's crds/ are installed and served; the operator's objects exist.
    assert kubectl("get", "crd", "-o", "name").stdout.split() == [
        "customresourcedefinition.apiextensions.k8s.io/finetunejobs.hone.dev",
        "customresourcedefinition.apiextensions.k8s.io/modelservings.hone.dev",
        "customresourcedefinition.apiextensions.k8s.io/tokenbudgets.hone.dev"]
    names = kubectl("-n", "hone-system", "get", "deploy,sa,svc,cm,secret", "-o", "name").stdout.split()
    assert {"deployment.apps/hone", "serviceaccount/hone", "secret/sh.helm.release.v1.hone.v1"} <= set(names)
    chart_rbac = ("get", "clusterrole,clusterrolebinding", "-l", "app.kubernetes.io/instance=hone", "-o", "name")
    assert kubectl(*chart_rbac).stdout.split() == [
        "clusterrole.rbac.authorization.k8s.io/hone", "clusterrole.rbac.authorization.k8s.io/hone-cluster-reads",
        "clusterrolebinding.rbac.authorization.k8s.io/hone",
        "clusterrolebinding.rbac.authorization.k8s.io/hone-cluster-reads"]

    helm("upgrade", "hone", chart, "--set", "replicaCount=2", "--set", "leaderElection.enabled=true")
    deploy = ("-n", "hone-system", "get", "deploy", "hone", "-o", "jsonpath={.spec.replicas}")
    assert kubectl(*deploy).stdout == "2"
    assert kubectl("-n", "hone-system", "get", "pdb,role", "-o", "name").stdout.split() == [
        "poddisruptionbudget.policy/hone", "role.rbac.authorization.k8s.io/hone-leader"]
    statuses = [line.split("\t")[2].strip() for line in helm("history", "hone").splitlines()[1:]]
    assert statuses == ["superseded", "deployed"]

    assert "Rollback was a success" in helm("rollback", "hone", "1")
    assert kubectl(*deploy).stdout == "1"
    assert kubectl("-n", "hone-system", "get", "pdb,role", "-o", "name").stdout == ""  # gone with revision 2

    assert 'release "hone" uninstalled' in helm("uninstall", "hone")
    assert kubectl("-n", "hone-system", "get", "deploy,sa,svc,cm,secret", "-o", "name").stdout == ""
    assert kubectl(*chart_rbac).stdout == ""
    assert len(kubectl("get", "crd", "-o", "name").stdout.split()) == 3  # helm keeps the CRDs it installed


def test_describe_events_watch_wait_and_cascading_delete(kubectl, kubeconfig: Path, tmp_path: Path,
                                                         apiserver: ApiServerThread) -> None:
    import threading

    kubectl("create", "namespace", "team-a")
    kubectl("-n", "team-a", "apply", "-k", str(EXAMPLE))
    uid = kubectl("-n", "team-a", "get", "ftj", "skateboard-support", "-o", "jsonpath={.metadata.uid}").stdout
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "skateboard-support.1"},
             "involvedObject": {"apiVersion": "hone.dev/v1alpha1", "kind": "FineTuneJob", "name": "skateboard-support",
                                "namespace": "team-a", "uid": uid},
             "reason": "Validated", "message": "1,234 tokens, estimated $0.09", "type": "Normal",
             "source": {"component": "hone"}, "count": 1}
    kubectl("-n", "team-a", "apply", "-f", "-", stdin=json.dumps(event))
    described = kubectl("-n", "team-a", "describe", "ftj", "skateboard-support").stdout
    assert re.search(r"Normal\s+Validated\s+\S+\s+hone\s+1,234 tokens, estimated \$0\.09", described), described

    # get -w prints the printer columns for every event, the header once.
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    watch = subprocess.Popen([_kubectl_bin(), "-n", "team-a", "get", "ftj", "-w", "--output-watch-events"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watch.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("ADDED") for line in lines), what="the ADDED event")
        kubectl("-n", "team-a", "label", "ftj", "skateboard-support", "watched=yes")
        wait_for(lambda: any(line.startswith("MODIFIED") for line in lines), what="the MODIFIED event")
    finally:
        watch.kill()
        watch.wait(10)
    assert _rows(lines[0])[0] == ["EVENT", "NAME", "PHASE", "PROGRESS", "TOKENS", "LOSS", "AGE"]
    assert sum(line.startswith("EVENT") for line in lines) == 1

    # wait --for=condition, once the operator's condition is there.
    def ready(server) -> None:
        kind = server.kinds[("hone.dev", "v1alpha1", "modelservings")]
        server.write(kind, "team-a", "skateboard-support", "status", {"status": {"phase": "Ready", "conditions": [
            {"type": "Ready", "status": "True", "reason": "Available", "message": "1/1 replicas ready",
             "lastTransitionTime": "2026-12-01T00:00:00Z"}]}}, "application/merge-patch+json")
    apiserver.call(ready)
    assert kubectl("-n", "team-a", "wait", "--for=condition=Ready", "msv/skateboard-support",
                   "--timeout=10s").stdout.strip() == "modelserving.hone.dev/skateboard-support condition met"

    # Dependents (by ownerReferences) go with their owner, unless the delete orphans them.
    for owner in ("keep-owner", "gone-owner"):
        kubectl("-n", "team-a", "create", "configmap", owner)
        owner_uid = kubectl("-n", "team-a", "get", "cm", owner, "-o", "jsonpath={.metadata.uid}").stdout
        kubectl("-n", "team-a", "apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{owner}-child", "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": owner_uid}]}}))
    kubectl("-n", "team-a", "delete", "cm", "keep-owner", "--cascade=orphan")
    kubectl("-n", "team-a", "delete", "cm", "gone-owner")
    left = kubectl("-n", "team-a", "get", "cm", "-o", "name").stdout.split()
    assert "configmap/keep-owner-child" in left and "configmap/gone-owner-child" not in left


def test_cel_rules_refuse_at_apply_time(kubectl, tmp_path: Path) -> None:
    kubectl("create", "namespace", "team-a")
    sample = yaml.safe_load((ROOT / "crds/samples/finetunejob-minimal.yaml").read_text())
    both = copy.deepcopy(sample)
    both["spec"]["trainingData"]["uri"] = "pvc://data/train.jsonl"
    out = kubectl("-n", "team-a", "apply", "-f", "-", stdin=json.dumps(both), ok=False)
    assert out.returncode == 1
    assert out.stderr.strip() == ('The FineTuneJob "support-assistant" is invalid: spec.trainingData: Invalid value: '
                                  '"object": set exactly one of uri, configMap, inline, file (got uri, configMap)')
    kubectl("-n", "team-a", "apply", "-f", "-", stdin=json.dumps(sample))
    moved = copy.deepcopy(sample)
    moved["spec"]["baseModel"]["uri"] = "org/another-model"
    out = kubectl("-n", "team-a", "apply", "-f", "-", stdin=json.dumps(moved), ok=False)
    assert "spec.baseModel: Invalid value: \"object\": baseModel cannot change once a FineTuneJob exists" in out.stderr
    out = kubectl("-n", "team-a", "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(moved),
                  ok=False)
    assert "baseModel cannot change once a FineTuneJob exists" in out.stderr  # a GitOps sync is refused alike
    msv = yaml.safe_load((ROOT / "crds/samples/modelserving.yaml").read_text())
    msv["spec"] = {"replicas": 1}
    out = kubectl("-n", "team-a", "apply", "-f", "-", stdin=json.dumps(msv), ok=False)
    assert "spec: Invalid value: \"object\": set fineTuneJobRef, adapters or baseModel: there is nothing to serve" \
        in out.stderr
