"""The node's network: a bridge, a network namespace per pod, cluster DNS and Service addresses.

* **Bridge** ``hone<k>`` with the node's address ``10.<100+k>.0.1/16``; ``k`` is the first index
  no other node on this machine holds, so several nodes (two test runs) coexist. Its hardware
  address is fixed (:attr:`Bridge.mac`), as Docker's and the CNI bridge plugin's are.
* **Pods**: a network namespace each (``ip netns``), a veth pair into the bridge, an address
  from ``10.<100+k>.1.0`` up. No default route: a pod reaches other pods, the node and the
  Services, nothing else.
* **Services**: each ClusterIP (allocated by the API server from ``10.<100+k>.200.0/24``) is
  an address of the bridge, and a userspace proxy on the node listens on each of its ports
  and forwards every connection to a ready endpoint pod, as kube-proxy's userspace mode did.
  The host reaches Services and pods directly (it is on the bridge), so clients on the
  machine talk to a ModelServing's Service at its ClusterIP.
* **DNS** on the node's address, port 53: ``<svc>.<ns>.svc.cluster.local`` (the ClusterIP, or
  for a headless Service the endpoint pods' addresses), ``<hostname>.<subdomain>.<ns>.svc.
  cluster.local`` for pods with a hostname and subdomain (the Indexed Job's ``<job>-<index>``),
  answered with dnspython from the API server's current state; pods get the usual
  ``search <ns>.svc.cluster.local svc.cluster.local cluster.local`` and ``ndots:5``.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

log = logging.getLogger("hone.node")

CLUSTER_DOMAIN = "cluster.local"
#: A lock file per bridge index: the node that holds its lock (``flock``) owns the index, and the kernel lets
#: go of it when that process ends, however it ends, so a crashed node's bridge is reclaimed by the next.
OWNERS = Path("/run/hone-node")


class NetworkError(RuntimeError):
    pass


async def ip(*args: str, stdin: str | None = None, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate(stdin.encode() if stdin else None)
    if check and proc.returncode:
        raise NetworkError(f"ip {' '.join(args)}: {err.decode().strip()}")
    return out.decode()


def _ip_sync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


class Bridge:
    """The node's bridge and its address plan; created by :meth:`create`, removed by :meth:`remove`."""

    def __init__(self, index: int):
        self.index = index
        self.name = f"hone{index}"
        self.subnet = ipaddress.ip_network(f"10.{100 + index}.0.0/16")
        self.gateway = ipaddress.ip_address(f"10.{100 + index}.0.1")
        self.service_range = ipaddress.ip_network(f"10.{100 + index}.200.0/24")
        self._next_pod = 0
        self._lock: int | None = None  # the lock file's descriptor while this process owns the index

    @property
    def mac(self) -> str:
        """The bridge's own hardware address, set when it is made (locally administered: ``02:`` then "hone"
        and the index). A bridge left to choose takes the lowest of its ports' addresses and changes it when
        that port goes: every pod still sending the node frames for the old one (its ARP entry lives 15 to
        45 s) loses them without a reset, and its connections to the API server and the Services hang."""
        return f"02:68:6f:6e:65:{self.index:02x}"

    @property
    def _add(self) -> tuple[str, ...]:
        return ("link", "add", self.name, "address", self.mac, "type", "bridge")

    @property
    def lock_file(self) -> Path:
        return OWNERS / f"{self.name}.lock"

    @classmethod
    def create(cls) -> "Bridge":
        """Take the first free index: the first whose lock this process gets. Whatever still carries the names
        of an index once its lock is held (the bridge, its pods' namespaces, cgroups) was left by a node that is
        gone, and is removed first. Two nodes never both hold an index, so neither removes what the other made
        (a node that was cleaning up an index removed its pods' namespaces by name after the next owner had
        made its own; the lock is released only once the cleanup is done)."""
        OWNERS.mkdir(parents=True, exist_ok=True)
        for index in range(0, 100):
            bridge = cls(index)
            fd = os.open(bridge.lock_file, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by the pods
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            bridge._lock = fd
            if bridge._clear():
                log.warning("removed %s, left by a node that is gone", bridge.name)
            for args in (bridge._add, ("addr", "add", f"{bridge.gateway}/16", "dev", bridge.name),
                         ("link", "set", bridge.name, "up")):
                done = _ip_sync(*args)
                if done.returncode:
                    bridge.remove()
                    raise NetworkError(f"ip {' '.join(args)} (the node needs root and iproute2): "
                                       f"{done.stderr.strip()}")
            return bridge
        raise NetworkError("no free bridge index: 100 Hone nodes are running on this machine")

    def _clear(self) -> bool:
        """Remove the bridge, its pods' namespaces and cgroups (what this index's names carry); whether there was
        a bridge to remove."""
        existed = _ip_sync("link", "del", self.name).returncode == 0
        for controller in ("memory", "cpu"):
            shutil.rmtree(Path("/sys/fs/cgroup", controller, self.name), ignore_errors=True)
        for line in _ip_sync("netns", "list").stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(f"{self.name}-"):
                _ip_sync("netns", "del", name)
        return existed

    def remove(self) -> None:
        """Remove what the node made, then let go of the index."""
        self._clear()
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    def pod_address(self) -> ipaddress.IPv4Address:
        self._next_pod += 1
        host = 256 + self._next_pod  # from 10.x.1.1
        if host >= 200 * 256:
            raise NetworkError("the node ran out of pod addresses")
        return self.subnet.network_address + host

    async def add_service_address(self, address: str) -> None:
        await ip("addr", "replace", f"{address}/32", "dev", self.name)

    async def remove_service_address(self, address: str) -> None:
        await ip("addr", "del", f"{address}/32", "dev", self.name, check=False)


class PodNetwork:
    """A pod's network namespace with one address on the bridge."""

    def __init__(self, bridge: Bridge, number: int):
        self.bridge = bridge
        self.netns = f"{bridge.name}-{number}"
        self.veth = f"h{bridge.index}v{number}"
        self.address = str(bridge.pod_address())

    @property
    def path(self) -> str:
        return f"/run/netns/{self.netns}"

    async def create(self) -> "PodNetwork":
        # This node holds its bridge's index alone: a link or namespace of these names is a crashed run's.
        await ip("link", "del", self.veth, check=False)
        await ip("netns", "del", self.netns, check=False)
        await ip("netns", "add", self.netns)
        await ip("-batch", "-", stdin="\n".join([
            f"link add {self.veth} type veth peer name eth0 netns {self.netns}",
            f"link set {self.veth} master {self.bridge.name} up",
        ]) + "\n")
        await ip("-n", self.netns, "-batch", "-", stdin="\n".join([
            "link set lo up",
            f"addr add {self.address}/16 dev eth0",
            "link set eth0 up",
        ]) + "\n")
        return self

    async def remove(self) -> None:
        await ip("link", "del", self.veth, check=False)
        await ip("netns", "del", self.netns, check=False)


# --------------------------------------------------------------------------
# DNS
# --------------------------------------------------------------------------

class ClusterDNS(asyncio.DatagramProtocol):
    """Answers A queries for Services and pods from ``lookup(name) -> [addresses] | None`` (None: no such name)."""

    def __init__(self, lookup: Callable[[str], list[str] | None]):
        self.lookup = lookup
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - not DNS: nothing to answer
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            name = question.name.to_text().rstrip(".").lower()
            addresses = self.lookup(name)
            if addresses is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A and addresses:
                response.answer.append(dns.rrset.from_text_list(question.name, 5, dns.rdataclass.IN,
                                                                dns.rdatatype.A, addresses))
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


def resolv_conf(namespace: str, nameserver: str) -> str:
    return (f"search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
            f"nameserver {nameserver}\noptions ndots:5\n")


# --------------------------------------------------------------------------
# Service proxy
# --------------------------------------------------------------------------

class ServiceProxy:
    """Listens on a ClusterIP's port; each connection goes to ``pick(client address)``'s (address, port), or is
    closed."""

    def __init__(self, address: str, port: int, pick: Callable[[str], tuple[str, int] | None]):
        self.address, self.port, self.pick = address, port, pick
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connection, self.address, self.port, reuse_address=True)

    async def stop(self) -> None:
        if self.server:
            self.server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        target = self.pick(peer[0] if peer else "")
        if target is None:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*target), 10)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                try:
                    dst.close()
                except OSError:
                    pass
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
