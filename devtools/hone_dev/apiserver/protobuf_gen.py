"""Generates ``protobuf_types.json``, the wire schema :mod:`.protobuf` decodes kubectl's protobuf bodies with.

The source is the Go API types themselves (``types.go`` in kubernetes/api and
kubernetes/apimachinery): each struct field's tags give its protobuf number and wire type, its
JSON name, ``omitempty`` and ``inline``, and its Go type says whether it is a pointer (a set
pointer is sent even when zero, and kept; an unset one is not sent at all). That is everything
needed to turn a protobuf body into the JSON a client would have sent. Run from checkouts of
both repositories::

    python -m hone_dev.apiserver.protobuf_gen ~/src/kubernetes/api ~/src/kubernetes/apimachinery

Only the types reachable from :data:`ROOTS` are written (what typed kubectl commands send).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

#: Go package (as the schema names it) -> file in the two repositories.
PACKAGES = {
    "meta/v1": ("apimachinery", "pkg/apis/meta/v1/types.go"),
    "core/v1": ("api", "core/v1/types.go"),
    "apps/v1": ("api", "apps/v1/types.go"),
    "batch/v1": ("api", "batch/v1/types.go"),
    "rbac/v1": ("api", "rbac/v1/types.go"),
    "authorization/v1": ("api", "authorization/v1/types.go"),
    "authentication/v1": ("api", "authentication/v1/types.go"),
    "coordination/v1": ("api", "coordination/v1/types.go"),
    "policy/v1": ("api", "policy/v1/types.go"),
    "networking/v1": ("api", "networking/v1/types.go"),
    "autoscaling/v1": ("api", "autoscaling/v1/types.go"),
    "autoscaling/v2": ("api", "autoscaling/v2/types.go"),
}
IMPORTS = {
    "k8s.io/apimachinery/pkg/apis/meta/v1": "meta/v1", "k8s.io/api/core/v1": "core/v1",
    "k8s.io/api/apps/v1": "apps/v1", "k8s.io/api/batch/v1": "batch/v1",
    "k8s.io/api/autoscaling/v1": "autoscaling/v1",
    "k8s.io/apimachinery/pkg/api/resource": "resource", "k8s.io/apimachinery/pkg/util/intstr": "intstr",
    "k8s.io/apimachinery/pkg/runtime": "runtime", "k8s.io/apimachinery/pkg/types": "types",
}
#: Types the decoder knows by themselves.
SPECIAL = {"meta/v1.Time": "time", "meta/v1.MicroTime": "microtime", "meta/v1.Duration": "duration",
           "meta/v1.FieldsV1": "fieldsv1", "resource.Quantity": "quantity", "intstr.IntOrString": "intorstring",
           "runtime.RawExtension": "rawextension", "types.UID": "string", "meta/v1.Verbs": "list:string",
           "types.NodeName": "string"}
#: The kinds typed kubectl commands (create ..., auth can-i, create token, scale) send as protobuf.
ROOTS = ["core/v1." + k for k in ("Namespace", "ServiceAccount", "Secret", "ConfigMap", "Service", "Pod",
                                  "PersistentVolumeClaim", "Event")] + [
    "apps/v1.Deployment", "batch/v1.Job", "batch/v1.CronJob", "rbac/v1.Role", "rbac/v1.ClusterRole",
    "rbac/v1.RoleBinding", "rbac/v1.ClusterRoleBinding", "authorization/v1.SelfSubjectAccessReview",
    "authorization/v1.SubjectAccessReview", "authorization/v1.SelfSubjectRulesReview",
    "authentication/v1.TokenRequest", "authentication/v1.TokenReview", "authentication/v1.SelfSubjectReview",
    "coordination/v1.Lease", "policy/v1.PodDisruptionBudget", "networking/v1.NetworkPolicy",
    "autoscaling/v1.Scale", "autoscaling/v2.HorizontalPodAutoscaler", "meta/v1.DeleteOptions",
    "policy/v1.Eviction",
]

FIELD = re.compile(r'^\s*(?:(\w+)\s+)?(\S+)\s+`(.*)`\s*$')
TAG = re.compile(r'(\w+):"([^"]*)"')
SCALARS = {"string": "string", "bool": "bool", "int32": "int", "int64": "int", "int": "int", "uint32": "int",
           "uint64": "int", "float64": "double", "float32": "float", "[]byte": "bytes", "byte": "int"}


def read(path: Path, rel: str) -> str:
    """The file at HEAD of the checkout (a bare mirror or a work tree)."""
    try:
        return subprocess.run(["git", "-C", str(path), "show", f"HEAD:{rel}"], check=True, capture_output=True,
                              text=True).stdout
    except subprocess.CalledProcessError:
        return (path / rel).read_text()


def parse(pkg: str, text: str) -> tuple[dict, dict]:
    aliases = {}
    for alias, imp in re.findall(r'^\s*(\w+)?\s*"([^"]+)"\s*$', text, re.M):
        if imp in IMPORTS:
            aliases[alias or imp.rsplit("/", 1)[-1]] = IMPORTS[imp]
    structs: dict[str, list] = {}
    named: dict[str, str] = {}
    for name, under in re.findall(r"^type (\w+) (\S[^{\n]*?)\s*$", text, re.M):
        if not under.startswith("struct"):
            named[f"{pkg}.{name}"] = qualify(under.strip(), pkg, aliases)
    for name, body in re.findall(r"^type (\w+) struct \{\n(.*?)^\}", text, re.M | re.S):
        fields = []
        for line in body.splitlines():
            line = line.split("//")[0] if not line.strip().startswith("//") else ""
            m = FIELD.match(line)
            if not m:
                continue
            _, gotype, tags = m.groups()
            tag = dict(TAG.findall(tags))
            if "protobuf" not in tag:
                continue
            pb = tag["protobuf"].split(",")
            opts = dict(p.split("=", 1) for p in pb[3:] if "=" in p)
            jname, *jopts = tag.get("json", "").split(",")
            inline = jname == "" or "inline" in jopts
            fields.append({"n": int(pb[1]), "json": None if inline else (jname or opts["name"]),
                           "go": qualify(gotype, pkg, aliases), "omitempty": "omitempty" in jopts})
        structs[f"{pkg}.{name}"] = fields
    return structs, named


def qualify(gotype: str, pkg: str, aliases: dict[str, str]) -> str:
    prefix = ""
    while True:
        for mark in ("*", "[]"):
            if gotype.startswith(mark) and gotype != "[]byte":
                prefix += mark
                gotype = gotype[len(mark):]
                break
        else:
            break
    if gotype.startswith("map["):
        key, val = re.match(r"map\[([^\]]+)\](.+)", gotype).groups()
        return f"{prefix}map[{qualify(key, pkg, aliases)}]{qualify(val, pkg, aliases)}"
    if gotype in SCALARS:
        return prefix + gotype
    if "." in gotype:
        alias, name = gotype.split(".", 1)
        return f"{prefix}{aliases.get(alias, alias)}.{name}"
    return f"{prefix}{pkg}.{gotype}"


def resolve(go: str, structs: dict, named: dict, out: dict, todo: list) -> dict:
    """A field's Go type as the decoder needs it: kind, pointer, repeated, element/key/value types."""
    pointer = go.startswith("*")
    go = go.lstrip("*")
    if go.startswith("[]") and go != "[]byte":
        inner = resolve(go[2:], structs, named, out, todo)
        return {"kind": "list", "item": inner, "pointer": pointer}
    if go.startswith("map["):
        key, val = re.match(r"map\[([^\]]+)\](.+)", go).groups()
        return {"kind": "map", "key": resolve(key, structs, named, out, todo),
                "value": resolve(val, structs, named, out, todo), "pointer": pointer}
    if go in SCALARS:
        return {"kind": SCALARS[go], "pointer": pointer}
    if go in SPECIAL:
        special = SPECIAL[go]
        if special.startswith("list:"):
            return {"kind": "list", "item": {"kind": special[5:]}, "pointer": pointer}
        return {"kind": special, "pointer": pointer}
    if go in structs:
        if go not in out and go not in todo:
            todo.append(go)
        return {"kind": "message", "type": go, "pointer": pointer}
    if go in named:
        under = named[go]
        if under.startswith("[]") and under != "[]byte":
            # A named slice is a message of its own on the wire ({repeated items = 1}).
            return {"kind": "wrapped", "item": resolve(under[2:], structs, named, out, todo), "pointer": pointer}
        found = resolve(under, structs, named, out, todo)
        return {**found, "pointer": pointer or found.get("pointer", False)}
    # A type from a package not listed above (alpha APIs): the decoder skips the field.
    return {"kind": "skip"}


def generate(api: Path, apimachinery: Path) -> dict:
    structs: dict = {}
    named: dict = {}
    for pkg, (repo, rel) in PACKAGES.items():
        s, n = parse(pkg, read(api if repo == "api" else apimachinery, rel))
        structs.update(s)
        named.update(n)
    out: dict = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        fields = {}
        for f in structs[name]:
            t = resolve(f["go"], structs, named, out, todo)
            fields[str(f["n"])] = {"json": f["json"], "omitempty": f["omitempty"], **t}
        out[name] = fields
    return dict(sorted(out.items()))


def main(argv: list[str]) -> int:
    api, apimachinery = Path(argv[0]), Path(argv[1])
    commits = {name: subprocess.run(["git", "-C", str(p), "rev-parse", "HEAD"], capture_output=True, text=True)
               .stdout.strip() for name, p in (("kubernetes/api", api), ("kubernetes/apimachinery", apimachinery))}
    doc = {"_source": commits, "types": generate(api, apimachinery)}
    target = Path(__file__).with_name("protobuf_types.json")
    target.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{target}: {len(doc['types'])} types")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
