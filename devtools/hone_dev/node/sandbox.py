"""One container of a pod, as a process in Linux namespaces: ``python -m hone_dev.node.sandbox SPEC.json``.

Run as root by the node's kubelet (:mod:`hone_dev.node.kubelet`), with the container's log as
stdout and stderr. In order:

1. joins the pod's cgroups (memory, cpu, pids: the pod's limits) and its network namespace
   (the pod IP on the node's bridge, shared by every container of the pod);
2. unshares a mount, PID, UTS and IPC namespace of its own;
3. builds the container's root: an overlay whose lower layer is the host's root filesystem
   (the substitute for the image: the project's installed environment is in it, and the venv
   is also bound at the image's ``/opt/hone``) and whose upper layer is a tmpfs, so nothing
   the container writes reaches the host; ``/tmp``, ``/run``, ``/dev/shm`` and the node's own
   state folder are fresh tmpfs (a pod never sees another pod's volumes or the host's temp
   files), except that the environment and the checkout stay visible, read-only, where they
   are (``expose``); every volume is bind-mounted at its ``mountPath`` (read-only where asked); the root
   is made read-only for ``readOnlyRootFilesystem``;
4. forks the container's process, PID 1 of its PID namespace (so, as in a container, a SIGTERM
   it installed no handler for is ignored, and when it exits everything it started dies), which
   mounts ``/proc``, chroots, takes the user and groups, sets no_new_privs and execs the command;
5. forwards SIGTERM/SIGINT to it and exits with its status (``128 + signal`` when killed).

A command that cannot be started exits 128 with the reason on stderr (the kubelet reports it as
``StartError``), as a container runtime does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
#: What a runtime exits with when the container's process could not be started.
START_ERROR = 128

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None), f"mount {source} on {target}")


def inside(root: Path, path: str) -> Path:
    """``path`` as seen from ``root``: symbolic links followed within the root, never out of it
    (``/var/run`` is a link to ``/run``; followed on the host it would lead to the host's ``/run``)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(f"too many levels of symbolic links in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def _mount_point(path: Path, is_file: bool) -> None:
    if is_file:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch()
    else:
        path.mkdir(parents=True, exist_ok=True)


def bind(source: str, target: Path, read_only: bool) -> None:
    _mount_point(target, Path(source).is_file())
    mount(source, str(target), None, MS_BIND | MS_REC)
    if read_only:
        mount(None, str(target), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def tmpfs(target: Path, size: str | None = None, mode: str = "1777") -> None:
    target.mkdir(parents=True, exist_ok=True)
    options = f"mode={mode}" + (f",size={size}" if size else "")
    mount("tmpfs", str(target), "tmpfs", MS_NOSUID | MS_NODEV, options)


def _devices(dev: Path) -> None:
    """A /dev of the container's own (a tmpfs, as runtimes make it) with the host's few safe devices."""
    tmpfs(dev, mode="0755")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        (dev / name).touch()
        mount(f"/dev/{name}", str(dev / name), None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev / name)


def build_root(spec: dict[str, Any]) -> Path:
    """The container's filesystem under a fresh tmpfs at ``spec['scratch']``; returns the root."""
    scratch = Path(spec["scratch"])
    tmpfs(scratch, mode="0700")
    upper, work, root = scratch / "upper", scratch / "work", scratch / "root"
    for p in (upper, work, root):
        p.mkdir()
    mount("overlay", str(root), "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={work}")
    mount(str(root), str(root), None, MS_BIND)  # a bind of its own, so it alone can be made read-only
    _devices(root / "dev")
    mount("/sys", str(root / "sys"), None, MS_BIND | MS_REC)
    mount(None, str(root / "sys"), None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    fresh = ("/tmp", "/run", "/dev/shm")
    for masked in fresh:
        tmpfs(inside(root, masked))
    bind(spec["environment"], inside(root, "/opt/hone"), read_only=True)
    for m in spec["mounts"]:
        target = inside(root, m["target"])
        if m.get("tmpfs"):
            tmpfs(target, m.get("size"))
        else:
            bind(m["source"], target, m.get("readOnly", False))
    # What stands in for the image (the venv, the checkout it was installed from, the interpreter)
    # stays visible where it lives, even under /tmp or a volume mounted there (a CI checkout may be in
    # /tmp, and Hone's pods mount an emptyDir at /tmp); then the node's own folders are hidden.
    covering = [*fresh, *(m["target"] for m in spec["mounts"])]
    for path in spec.get("expose", []):
        if any(Path(path).is_relative_to(m) for m in covering):
            bind(path, inside(root, path), read_only=True)
    for masked in spec.get("mask", []):
        tmpfs(inside(root, masked))
    (root / "proc").mkdir(exist_ok=True)
    for path in spec.get("traversable", []):
        _traversable(root, Path(path))
    if spec.get("readOnlyRoot"):
        mount(None, str(root), None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    return root


def _traversable(root: Path, path: Path) -> None:
    """Let every user through ``path``'s folders in this root's upper layer (a copy-up: the host keeps its modes).

    The image's interpreter must be usable by the container's user; on a host it may live under
    ``/root`` (pyenv), which is closed to others.
    """
    for folder in [*reversed(path.parents), path]:
        there = inside(root, str(folder))
        try:
            mode = there.stat().st_mode
        except OSError:
            return
        if not mode & 0o001:
            try:
                os.chmod(there, mode | 0o055)
            except OSError:  # on a read-only bind (an exposed path): the host's modes hold
                pass


def enter_cgroups(paths: list[str]) -> None:
    for path in paths:
        Path(path, "cgroup.procs").write_text(str(os.getpid()))


def enter_netns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns {path}")
    finally:
        os.close(fd)


def start(spec: dict[str, Any], root: Path) -> None:
    """In the forked child, PID 1 of the new PID namespace: become the container's process."""
    try:
        mount("proc", str(root / "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        os.chroot(root)
        os.chdir(spec.get("workingDir") or "/")
        uid, gid = spec["user"]
        os.setgroups(spec.get("groups", []))
        os.setgid(gid)
        os.setuid(uid)
        # Should this sandbox process die (SIGKILL), the container goes with it, never orphaned.
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
        if spec.get("noNewPrivileges"):
            _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except OSError as exc:
        print(f"hone-node: failed to start container process {spec['argv'][:1]}: {exc}", file=sys.stderr, flush=True)
        os._exit(START_ERROR)


def main(spec_path: str) -> int:
    # Signals that come before the container's process exists are kept and passed on once it does.
    pending: list[int] = []
    child = 0

    def forward(signum: int, _frame: Any) -> None:
        if not child:
            pending.append(signum)
            return
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    spec = json.loads(Path(spec_path).read_text())
    enter_cgroups(spec.get("cgroups", []))
    enter_netns(spec["netns"])
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = build_root(spec)
    socket.sethostname(spec["hostname"])
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        start(spec, root)
    child = pid
    for signum in pending:
        forward(signum, None)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            return START_ERROR
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
