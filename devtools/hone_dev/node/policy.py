"""NetworkPolicy enforcement on the node: iptables rules in each pod's network namespace.

A pod's namespace gets its rules before its containers start, and they are rewritten (only where
they changed) whenever pods, NetworkPolicies, namespaces or Services change, as a CNI's policy
agent does. The semantics are Kubernetes' (networking.k8s.io/v1):

* a pod is **isolated** for a direction when a policy of its namespace selects it with that
  ``policyTypes`` entry (``["Ingress"]``, plus ``"Egress"`` when the policy has ``egress``, if
  unset); an isolated pod admits only what the union of those policies' rules allows;
* peers: ``podSelector`` (the policy's namespace), ``namespaceSelector`` (every namespace has the
  ``kubernetes.io/metadata.name`` label, as the API server sets it), both (ANDed), ``ipBlock``
  with ``except``; ``matchLabels`` and ``matchExpressions`` (In, NotIn, Exists, DoesNotExist);
* ports: numbers, ranges (``endPort``) and named ports, resolved against the destination pod's
  container ports; TCP and UDP (SCTP is not enforced: such a port entry opens nothing);
* a Service's ClusterIP is judged by its endpoints, as a NetworkPolicy sees the packet after
  kube-proxy translated it: egress to ``ClusterIP:port`` is allowed when the pod may reach one
  of the Service's ready endpoints on its target port, and the Service proxy only forwards a
  connection to an endpoint whose ingress (and the client's egress) admits it (:meth:`Firewall.admits`);
* what stands behind the node's own address: the cluster DNS on port 53, seen by policies as a
  pod labelled ``k8s-app: kube-dns`` in ``kube-system``; the API server (the ``kubernetes``
  Service), seen as the node's address on port 443; anything else on the node (a test's object
  store) as the node's address (``ipBlock`` only, as a host-network process).

Traffic from the node to a pod (the kubelet's probes, the Service proxy, the host's clients) is
always admitted, as most CNIs do; replies of an admitted connection are always let through.
Refused traffic is rejected (a TCP reset, an ICMP port-unreachable), so a client fails at once
rather than after a timeout. Addresses outside the node's network are unreachable from pods
anyway (no default route), so ``ipBlock`` only decides about the node, pods and Services.

Needs ``iptables-restore`` (legacy or nft; ``.ci/tools.sh`` extracts iptables-legacy from Debian's
package into ``.tools/``); :func:`iptables` finds it. Without it the node enforces nothing and
says so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hone_dev import ROOT
from hone_dev.apiserver.kinds import NAMESPACES, PODS, SERVICES
from hone_dev.node.controllers import resync_on_changes

log = logging.getLogger("hone.node")

NETWORKPOLICIES = ("networking.k8s.io", "v1", "networkpolicies")
#: How the cluster DNS appears to NetworkPolicies (as CoreDNS's pods do in most clusters).
DNS_NAMESPACE, DNS_LABELS, DNS_PORT = "kube-system", {"k8s-app": "kube-dns"}, 53
#: The port the API server listens on, as a NetworkPolicy sees it.
API_SERVER_PORT = 443
PROTOCOLS = {"TCP": "tcp", "UDP": "udp"}

#: (protocol, first port, last port); a rule's ports are a list of these, or None for every port.
Port = tuple[str, int, int]
Ports = list[Port] | None


def iptables() -> str | None:
    """The ``iptables-restore`` the node uses: .tools' (see .ci/tools.sh), else the machine's; None without."""
    local = ROOT / ".tools" / "bin" / "iptables-restore"
    return str(local) if local.exists() else shutil.which("iptables-restore")


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector's verdict (``{}`` selects everything)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def in_block(ip: str, block: dict[str, Any]) -> bool:
    address = ipaddress.ip_address(ip)
    try:
        if address not in ipaddress.ip_network(block["cidr"], strict=False):
            return False
        return not any(address in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [])
    except ValueError:  # an address of the other family, or a malformed block: it matches nothing
        return False


def covers(ports: Ports, protocol: str, port: int) -> bool:
    return ports is None or any(p == protocol and first <= port <= last for p, first, last in ports)


@dataclass(frozen=True)
class Endpoint:
    """Something traffic goes to or comes from: a pod, or what stands behind the node's address."""

    ip: str
    namespace: str | None = None  # None: not a pod (only ipBlock peers match it)
    labels: dict[str, str] = field(default_factory=dict)
    #: container ports by name: (protocol, port)
    named: dict[str, tuple[str, int]] = field(default_factory=dict)
    pod: dict[str, Any] | None = None

    @classmethod
    def of(cls, pod: dict[str, Any]) -> "Endpoint":
        named = {p["name"]: (p.get("protocol", "TCP"), int(p["containerPort"]))
                 for c in (pod.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []
                 if p.get("name")}
        return cls(pod["status"]["podIP"], pod["metadata"]["namespace"], pod["metadata"].get("labels") or {},
                   named, pod)


def running(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return bool(status.get("podIP")) and status.get("phase") not in ("Succeeded", "Failed")


class World:
    """The cluster's state as the policies see it: who is selected, and what may reach what."""

    def __init__(self, pods: Iterable[dict[str, Any]], policies: Iterable[dict[str, Any]],
                 namespaces: dict[str, dict[str, str]], node_ip: str):
        self.pods = [Endpoint.of(p) for p in pods if running(p)]
        self.by_ip = {e.ip: e for e in self.pods}
        self.policies = list(policies)
        self.namespaces = namespaces
        #: The node's address: a host-network process behind it (the API server among them) matches ipBlock only.
        self.node = Endpoint(node_ip)
        self.dns = Endpoint(node_ip, DNS_NAMESPACE, DNS_LABELS, {"dns": ("UDP", DNS_PORT), "dns-tcp": ("TCP", DNS_PORT)})

    @classmethod
    def from_store(cls, server: Any, node_ip: str) -> "World":
        store = server.store
        namespaces = {name: dict((ns.get("metadata") or {}).get("labels") or {})
                      for (_, name), ns in store[NAMESPACES].items()}
        return cls(store[PODS].values(), store[NETWORKPOLICIES].values(), namespaces, node_ip)

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {**self.namespaces.get(namespace, {}), "kubernetes.io/metadata.name": namespace}

    def selecting(self, pod: Endpoint, direction: str) -> list[dict[str, Any]]:
        """The policies that isolate ``pod`` for ``direction`` (``Ingress`` or ``Egress``)."""
        found = []
        for policy in self.policies:
            spec = policy.get("spec") or {}
            if policy["metadata"].get("namespace") != pod.namespace:
                continue
            types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
            if direction in types and selects(spec.get("podSelector") or {}, pod.labels):
                found.append(policy)
        return found

    def matches(self, peer: dict[str, Any], policy_namespace: str, other: Endpoint) -> bool:
        if "ipBlock" in peer:
            return in_block(other.ip, peer["ipBlock"])
        if other.namespace is None:
            return False
        if "namespaceSelector" in peer:
            in_namespace = selects(peer["namespaceSelector"] or {}, self.namespace_labels(other.namespace))
        else:
            in_namespace = other.namespace == policy_namespace
        return in_namespace and selects(peer.get("podSelector") or {}, other.labels)

    @staticmethod
    def ports(rule: dict[str, Any], destination: Endpoint) -> Ports:
        """The ports a rule opens on ``destination`` (named ports are its container ports'); None: all."""
        if not rule.get("ports"):
            return None
        out: list[Port] = []
        for entry in rule["ports"]:
            protocol = entry.get("protocol", "TCP")
            port = entry.get("port")
            if protocol not in PROTOCOLS:
                continue
            if port is None:
                out.append((protocol, 1, 65535))
                continue
            if isinstance(port, str) and not port.isdigit():
                named = destination.named.get(port)
                if named is None or named[0] != protocol:
                    continue
                first = named[1]
            else:
                first = int(port)
            out.append((protocol, first, int(entry.get("endPort") or first)))
        return out

    def _allowed(self, subject: Endpoint, other: Endpoint, direction: str) -> Ports:
        """What ``subject``'s policies for ``direction`` allow between it and ``other`` (None: everything)."""
        policies = self.selecting(subject, direction)
        if not policies:
            return None
        key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        destination = other if direction == "Egress" else subject
        allowed: list[Port] = []
        for policy in policies:
            for rule in (policy.get("spec") or {}).get(key) or []:
                peers = rule.get(peers_key)
                if peers and not any(self.matches(p, policy["metadata"]["namespace"], other) for p in peers):
                    continue
                ports = self.ports(rule, destination)
                if ports is None:
                    return None
                allowed += ports
        return allowed

    def egress(self, source: Endpoint, destination: Endpoint) -> Ports:
        return self._allowed(source, destination, "Egress")

    def ingress(self, destination: Endpoint, source: Endpoint) -> Ports:
        return self._allowed(destination, source, "Ingress")

    def admits(self, source: Endpoint, destination: Endpoint, protocol: str, port: int) -> bool:
        """Whether a connection from ``source`` to ``destination``'s port passes both pods' policies."""
        egress_ok = source.namespace is None or covers(self.egress(source, destination), protocol, port)
        ingress_ok = destination.namespace is None or covers(self.ingress(destination, source), protocol, port)
        return egress_ok and ingress_ok

    # ---- iptables -------------------------------------------------------------

    def rules(self, pod: Endpoint, services: list[tuple[str, int, list[tuple[Endpoint, int]]]]) -> str:
        """``pod``'s filter table for iptables-restore. ``services``: each ClusterIP port (TCP) with its ready
        endpoints and their target ports (the API server's Service with the node's address)."""
        lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
        if self.selecting(pod, "Ingress"):
            lines += ["-A INPUT -i lo -j ACCEPT", "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                      f"-A INPUT -s {self.node.ip}/32 -j ACCEPT"]
            for source in self.pods:
                if source.ip != pod.ip:
                    lines += _accept("INPUT", "-s", source.ip, self.ingress(pod, source))
            lines += _reject("INPUT")
        if self.selecting(pod, "Egress"):
            lines += ["-A OUTPUT -o lo -j ACCEPT", "-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
            for address, port, endpoints in services:
                if any(covers(self.egress(pod, e), "TCP", target) for e, target in endpoints):
                    lines.append(f"-A OUTPUT -d {address}/32 -p tcp -m tcp --dport {port} -j ACCEPT")
            dns = self.egress(pod, self.dns)
            for protocol in ("UDP", "TCP"):
                if covers(dns, protocol, DNS_PORT):
                    proto = PROTOCOLS[protocol]
                    lines.append(f"-A OUTPUT -d {self.node.ip}/32 -p {proto} -m {proto} --dport {DNS_PORT} -j ACCEPT")
            lines += _accept("OUTPUT", "-d", self.node.ip, self.egress(pod, self.node))
            for destination in self.pods:
                if destination.ip != pod.ip:
                    lines += _accept("OUTPUT", "-d", destination.ip, self.egress(pod, destination))
            lines += _reject("OUTPUT")
        return "\n".join(lines + ["COMMIT", ""])


def _accept(chain: str, direction: str, address: str, ports: Ports) -> list[str]:
    if ports is None:
        return [f"-A {chain} {direction} {address}/32 -j ACCEPT"]
    out = []
    for protocol, first, last in sorted(set(ports)):
        proto = PROTOCOLS[protocol]
        span = str(first) if first == last else f"{first}:{last}"
        out.append(f"-A {chain} {direction} {address}/32 -p {proto} -m {proto} --dport {span} -j ACCEPT")
    return out


def _reject(chain: str) -> list[str]:
    return [f"-A {chain} -p tcp -j REJECT --reject-with tcp-reset",
            f"-A {chain} -j REJECT --reject-with icmp-port-unreachable"]


class Firewall:
    """Keeps every running pod's rules current (see the module docstring); ``routing`` is the node's
    :class:`~hone_dev.node.ServiceRouting` (the Services' endpoints), ``networks()`` the pods' network
    namespaces by pod IP."""

    def __init__(self, server: Any, node_ip: str, routing: Any, networks: Any, binary: str):
        self.server, self.node_ip, self.routing, self.networks, self.binary = server, node_ip, routing, networks, binary
        self.applied: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def world(self) -> World:
        return World.from_store(self.server, self.node_ip)

    def reachable(self, client: str, endpoints: list[tuple[dict[str, Any], int]]) -> list[tuple[dict[str, Any], int]]:
        """For the Service proxy: the (pod, port) ``endpoints`` that ``client`` (an address) may reach, judged
        against one view of the cluster; the node reaches every one."""
        world = self.world()
        source = world.by_ip.get(client)
        if source is None:
            return endpoints
        return [(pod, port) for pod, port in endpoints
                if running(pod) and world.admits(source, Endpoint.of(pod), "TCP", port)]

    def _services(self, world: World) -> list[tuple[str, int, list[tuple[Endpoint, int]]]]:
        out = []
        for (ns, name), svc in list(self.server.store[SERVICES].items()):
            address = (svc.get("spec") or {}).get("clusterIP")
            if not address or address == "None":
                continue
            for port in svc["spec"].get("ports") or []:
                if port.get("protocol", "TCP") != "TCP":
                    continue
                if (ns, name) == ("default", "kubernetes"):
                    endpoints = [(world.node, API_SERVER_PORT)]
                else:
                    endpoints = [(Endpoint.of(p), t) for p in self.routing.endpoints(ns, svc)
                                 if (t := self.routing.target_port(p, port)) is not None]
                out.append((address, int(port["port"]), endpoints))
        return out

    async def sync(self, pod_network: str | None = None) -> None:
        """Rewrite the rules of every pod whose rules changed. A pod whose rules cannot be set is logged;
        when that pod is ``pod_network`` (a pod about to start its containers), this raises."""
        async with self._lock:
            world = self.world()
            services = self._services(world)
            failed = []
            live = self.networks()
            for ip, netns in live.items():
                pod = world.by_ip.get(ip)
                if pod is None:
                    continue
                text = world.rules(pod, services)
                if self.applied.get(netns) == text:
                    continue
                # --wait: the xtables lock is one file for the whole machine (every network namespace, every node
                # on it); without the flag a restore that meets another's lock fails instead of waiting its turn.
                proc = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", netns, self.binary, "--wait", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
                _, err = await proc.communicate(text.encode())
                if proc.returncode:
                    self.applied.pop(netns, None)
                    if netns != pod_network and not Path("/run/netns", netns).exists():
                        continue  # the pod ended while its rules were being written: nothing is left to protect
                    what = f"{pod.namespace}/{(pod.pod or {}).get('metadata', {}).get('name')}: {err.decode().strip()}"
                    log.error("cannot set the NetworkPolicy rules of %s", what)
                    if netns == pod_network:
                        failed.append(what)
                else:
                    self.applied[netns] = text
            for netns in set(self.applied) - set(live.values()):
                del self.applied[netns]
            if failed:
                raise RuntimeError("cannot set NetworkPolicy rules: " + "; ".join(failed))

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def _run(self) -> None:
        async def sync() -> None:
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - a node bug: logged; the next change tries again
                log.exception("NetworkPolicy enforcement")

        await resync_on_changes(self.server, (PODS, NETWORKPOLICIES, NAMESPACES, SERVICES), sync)
