"""The images a node can run: Hone's Dockerfile targets, with the project's installed environment as their files.

The images cannot be built on these machines (no container runtime starts), so the node
substitutes each one by what it would hold: the installed environment (a venv, bound at the
image's ``/opt/hone``) and the host's filesystem. Everything else a pod gets from its image is
read from that image's stage of the ``Dockerfile``: ``ENTRYPOINT``, ``CMD``, ``ENV``, ``USER``
and ``WORKDIR``. A pod that asks for any other image fails to pull it, as it would on a node
that cannot reach the registry.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

from hone_dev import ROOT


@dataclasses.dataclass(frozen=True)
class Image:
    reference: str
    stage: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    user: tuple[int, int] = (0, 0)
    workdir: str = "/"


def _words(value: str) -> tuple[str, ...]:
    value = value.strip()
    if value.startswith("["):
        return tuple(json.loads(value))
    return ("/bin/sh", "-c", value)


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)


def stages(dockerfile: Path = ROOT / "Dockerfile") -> dict[str, dict]:
    """Each ``FROM … AS name`` stage's entrypoint, cmd, env, user and workdir."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out: dict[str, dict] = {}
    current: dict | None = None
    base_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else parts[0]
            current = out[name] = {"entrypoint": (), "cmd": (), "env": dict(base_env), "user": (0, 0), "workdir": "/"}
        elif current is None:
            continue
        elif word == "ENTRYPOINT":
            current["entrypoint"], current["cmd"] = _words(rest), ()
        elif word == "CMD":
            current["cmd"] = _words(rest)
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                current["env"][key] = _expand(value, current["env"])
        elif word == "USER":
            uid, _, gid = rest.strip().partition(":")
            current["user"] = (int(uid), int(gid or uid))
        elif word == "WORKDIR":
            current["workdir"] = rest.strip()
    return out


def hone_images(app_version: str, registry: str = "ghcr.io/hone-dev") -> dict[str, Image]:
    """The operator, api and runtime images as the chart names them (``<registry>/hone-<target>:<appVersion>``)."""
    found = stages()
    images = {}
    for target in ("operator", "api", "runtime"):
        stage = found[target]
        reference = f"{registry}/hone-{target}:{app_version}"
        images[reference] = Image(reference, target, tuple(stage["entrypoint"]), tuple(stage["cmd"]),
                                  tuple(stage["env"].items()), stage["user"], stage["workdir"])
    return images
