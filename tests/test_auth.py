"""Authentication and RBAC in the emulated API server, seen through the real kubectl.

Tokens authenticate (401 without one), RBAC from the stored roles and bindings decides (403 with
kube-apiserver's message), ``kubectl auth can-i`` and ``auth whoami`` answer from the same rules,
TokenRequest issues the tokens pods get, and nobody grants what they do not hold.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from hone_dev.apiserver import ApiServerThread
from hone_dev.cluster import install_chart_rbac

from tests.test_kubectl import _kubectl_bin


@pytest.fixture
def as_user(apiserver: ApiServerThread, tmp_path: Path):
    """kubectl with a kubeconfig of the admin, or of a ServiceAccount (a TokenRequest token)."""
    binary = _kubectl_bin()

    def run(who: tuple[str, str] | None, *args: str, ok: bool = True, stdin: str | None = None):
        if who is None:
            config = apiserver.write_kubeconfig(tmp_path / "admin.kubeconfig")
        else:
            config = apiserver.service_account_kubeconfig(tmp_path / f"{who[0]}-{who[1]}.kubeconfig", *who)
        env = {**os.environ, "KUBECONFIG": str(config), "HOME": str(tmp_path),
               "KUBECACHEDIR": str(tmp_path / "cache")}
        out = subprocess.run([binary, *args], capture_output=True, text=True, env=env, input=stdin, timeout=60)
        if ok:
            assert out.returncode == 0, f"kubectl {' '.join(args)} failed:\n{out.stderr}"
        return out
    return run


def test_requests_without_a_valid_token_get_401(apiserver: ApiServerThread, tmp_path: Path) -> None:
    config = apiserver.write_kubeconfig(tmp_path / "kubeconfig", token="not-a-token")
    out = subprocess.run([_kubectl_bin(), "get", "ns"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "KUBECONFIG": str(config), "HOME": str(tmp_path)})
    assert out.returncode == 1
    assert "You must be logged in to the server" in out.stderr


def test_can_i_whoami_and_forbidden_messages(as_user, apiserver: ApiServerThread) -> None:
    assert as_user(None, "auth", "can-i", "create", "finetunejobs", "-n", "team-a").stdout.strip() == "yes"
    assert "kubernetes-admin" in as_user(None, "auth", "whoami").stdout
    operator = install_chart_rbac(apiserver)
    assert operator == ("hone-system", "hone")
    who = as_user(operator, "auth", "whoami").stdout
    assert "system:serviceaccount:hone-system:hone" in who and "system:serviceaccounts:hone-system" in who
    # What the chart gives the operator, and what it does not.
    assert as_user(operator, "auth", "can-i", "patch", "finetunejobs", "--subresource=status",
                   "-n", "team-a").stdout.strip() == "yes"
    denied = as_user(operator, "auth", "can-i", "delete", "finetunejobs", "-n", "team-a", ok=False)
    assert (denied.returncode, denied.stdout.strip()) == (1, "no")
    assert as_user(operator, "auth", "can-i", "get", "secrets", "-n", "team-a", ok=False).stdout.strip() == "no"
    out = as_user(operator, "-n", "team-a", "delete", "ftj", "support-assistant", ok=False)
    assert out.stderr.strip() == (
        'Error from server (Forbidden): finetunejobs.hone.dev "support-assistant" is forbidden: User '
        '"system:serviceaccount:hone-system:hone" cannot delete resource "finetunejobs" in API group "hone.dev" '
        'in the namespace "team-a"')
    out = as_user(operator, "get", "secrets", "-A", ok=False)
    assert 'cannot list resource "secrets" in API group "" at the cluster scope' in out.stderr
    rules = as_user(operator, "auth", "can-i", "--list", "-n", "team-a").stdout
    assert "finetunejobs.hone.dev/status" in rules and "secrets" not in rules


def test_the_trainer_token_patches_its_own_status_and_nothing_else(as_user, apiserver: ApiServerThread) -> None:
    from hone_dev.repo import load_sample

    as_user(None, "create", "namespace", "team-a")
    for name in ("mine", "other"):
        ftj = load_sample("finetunejob-minimal.yaml")
        ftj["metadata"]["name"] = name
        as_user(None, "-n", "team-a", "apply", "-f", "-", stdin=json.dumps(ftj))
    # What the operator creates for the "mine" job's training pod (see builders.finetunejob.trainer_rbac).
    rbac = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "mine-trainer"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "mine-trainer"},
         "rules": [{"apiGroups": ["hone.dev"], "resources": ["finetunejobs/status"], "resourceNames": ["mine"],
                    "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "mine-trainer"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mine-trainer"},
         "subjects": [{"kind": "ServiceAccount", "name": "mine-trainer", "namespace": "team-a"}]},
    ]
    as_user(None, "-n", "team-a", "apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
    trainer = ("team-a", "mine-trainer")
    patch = ["--type", "merge", "--subresource", "status", "-p", '{"status":{"progress":{"percent":10}}}']
    assert "patched" in as_user(trainer, "-n", "team-a", "patch", "ftj", "mine", *patch).stdout
    out = as_user(trainer, "-n", "team-a", "patch", "ftj", "other", *patch, ok=False)  # kubectl reads it first
    assert 'User "system:serviceaccount:team-a:mine-trainer" cannot get resource "finetunejobs/status" in API ' \
           'group "hone.dev" in the namespace "team-a"' in out.stderr
    out = as_user(trainer, "-n", "team-a", "patch", "ftj", "mine", "--type", "merge", "-p",
                  '{"spec":{"suffix":"x"}}', ok=False)
    assert 'cannot get resource "finetunejobs" in API group "hone.dev"' in out.stderr  # not even read its spec

    # kubectl create token: a TokenRequest token, reviewed by TokenReview; void once the account is gone.
    token = as_user(None, "-n", "team-a", "create", "token", "mine-trainer").stdout.strip()
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    reviewed = json.loads(as_user(None, "create", "-o", "json", "-f", "-", stdin=json.dumps(review)).stdout)
    assert reviewed["status"]["authenticated"] is True
    assert reviewed["status"]["user"]["username"] == "system:serviceaccount:team-a:mine-trainer"
    as_user(None, "-n", "team-a", "delete", "serviceaccount", "mine-trainer")
    reviewed = json.loads(as_user(None, "create", "-o", "json", "-f", "-", stdin=json.dumps(review)).stdout)
    assert reviewed["status"]["authenticated"] is False


def test_nobody_grants_what_they_do_not_hold(as_user, apiserver: ApiServerThread) -> None:
    operator = install_chart_rbac(apiserver)
    as_user(None, "create", "namespace", "team-a")
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "too-much", "namespace": "team-a"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}
    out = as_user(operator, "create", "-f", "-", stdin=json.dumps(role), ok=False)
    assert out.returncode == 1
    assert ('roles.rbac.authorization.k8s.io "too-much" is forbidden: user "system:serviceaccount:hone-system:hone"'
            in out.stderr)
    assert 'attempting to grant RBAC permissions not currently held:\n{APIGroups:[""], Resources:["secrets"], ' \
           'Verbs:["get"]}' in out.stderr
    # What it holds, it may grant (the trainer's Role).
    role = {**role, "metadata": {"name": "fine", "namespace": "team-a"},
            "rules": [{"apiGroups": ["hone.dev"], "resources": ["finetunejobs/status"], "resourceNames": ["a"],
                       "verbs": ["get", "patch"]}]}
    as_user(operator, "create", "-f", "-", stdin=json.dumps(role))
    # A binding to a role it does not hold the permissions of is refused too.
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "admin-for-me", "namespace": "team-a"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
               "subjects": [{"kind": "ServiceAccount", "name": "hone", "namespace": "hone-system"}]}
    out = as_user(operator, "create", "-f", "-", stdin=json.dumps(binding), ok=False)
    assert 'rolebindings.rbac.authorization.k8s.io "admin-for-me" is forbidden' in out.stderr
